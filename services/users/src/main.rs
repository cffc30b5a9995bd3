//! `shopmesh-users`: the users service on its own (distributed mode).

shopmesh_host::main!(shopmesh_users::Users);
