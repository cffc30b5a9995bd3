//! `shopmesh-users`: the users service on its own (distributed mode).

#![forbid(unsafe_code)]

shopmesh_host::main!(shopmesh_users::Users);
