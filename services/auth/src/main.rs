//! `shopmesh-auth`: the auth service on its own (distributed mode).

shopmesh_host::main!(shopmesh_auth::Auth);
