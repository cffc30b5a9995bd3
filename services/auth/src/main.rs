//! `shopmesh-auth`: the auth service on its own (distributed mode).

#![forbid(unsafe_code)]

shopmesh_host::main!(shopmesh_auth::Auth);
