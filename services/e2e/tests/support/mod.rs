//! A running `shopmesh up` for end-to-end tests: the real binary, its printed addresses and
//! first administrator, and real gRPC clients.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shopmesh_kit::Error;
use shopmesh_kit::crypto::{MasterKey, Sealer};
use shopmesh_kit::token::{Claims, SigningKey};
use shopmesh_proto::shopmesh::auth::v1::auth_service_client::AuthServiceClient;
use shopmesh_proto::shopmesh::auth::v1::{LoginRequest, LoginResponse, RefreshRequest};
use shopmesh_proto::shopmesh::users::v1::user_service_client::UserServiceClient;
use shopmesh_proto::shopmesh::users::v1::{CreateUserRequest, GetMeRequest, User};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic::{Code, Request};

pub const PASSWORD: &str = "correct horse battery";

/// A running `shopmesh up`.
pub struct Platform {
    child: Child,
    /// Every line the platform printed (banner and logs, stdout and stderr).
    pub output: Arc<Mutex<Vec<String>>>,
    pub data_dir: PathBuf,
    pub users: UserServiceClient<Channel>,
    pub auth: AuthServiceClient<Channel>,
    /// Printed on the first start only.
    pub admin_password: Option<String>,
    /// The edge's base URL, `http://127.0.0.1:port`.
    pub edge: String,
    /// Every service's gRPC address, by name.
    pub grpc: std::collections::HashMap<String, String>,
}

impl Platform {
    /// Starts the platform on `data_dir` with `settings` (`key=value` overrides).
    pub async fn start(data_dir: &Path, settings: &[String]) -> Self {
        let mut command = Command::new(shopmesh_testkit::binaries::path("shopmesh"));
        command
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--set", "admin.listen=\"127.0.0.1:0\""])
            .args(["--set", "log.level=\"warn\""])
            .args(["--set", "services.users.bcrypt_cost=4"])
            .args(["--set", "services.edge.listen=\"127.0.0.1:0\""])
            .args(["--set", "services.catalog.demo_catalog=false"]);
        for setting in settings {
            command.args(["--set", setting]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start shopmesh");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                eprintln!("{line}");
                collected.lock().unwrap().push(line);
            }
        });
        let (mut edge, mut admin_password) = (None, None);
        let mut grpc = std::collections::HashMap::new();
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                output.lock().unwrap().push(line.clone());
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["edge", url, ..] => edge = Some((*url).to_owned()),
                    [name, url] if url.starts_with("grpc://") => {
                        grpc.insert((*name).to_owned(), url.replace("grpc://", "http://"));
                    }
                    ["first", "admin", _, "password", password, ..] => {
                        admin_password = Some((*password).to_owned());
                    }
                    ["shopmesh", "is", "ready", ..] => return,
                    _ => {}
                }
            }
            panic!("shopmesh exited before it was ready");
        })
        .await;
        started.expect("shopmesh ready within 60 s");
        let (users, auth) = (grpc.get("users").cloned(), grpc.get("auth").cloned());
        // Keep reading, so the platform never blocks on a full pipe.
        let collected = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let connect = |url: Option<String>| async move {
            Channel::from_shared(url.expect("a printed address"))
                .unwrap()
                .connect()
                .await
                .unwrap()
        };
        Self {
            child,
            output,
            data_dir: data_dir.to_owned(),
            users: UserServiceClient::new(connect(users).await),
            auth: AuthServiceClient::new(connect(auth).await),
            admin_password,
            edge: edge.expect("the edge's address is printed"),
            grpc,
        }
    }

    /// A channel to a service's own gRPC port (as a peer service would call it).
    pub fn channel(&self, service: &str) -> Channel {
        Channel::from_shared(self.grpc[service].clone())
            .expect("a printed address")
            .connect_lazy()
    }

    /// Kills the platform with SIGKILL: no drain, no clean-up, as a crash or `kill -9` would.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("send SIGKILL");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exit within 10 s of SIGKILL");
    }

    /// Stops the platform with SIGINT, as Ctrl-C would, and checks it exits 0 in time; returns
    /// what it printed.
    pub async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exit within 10 s of SIGINT")
            .unwrap();
        assert!(status.success(), "exit status {status}");
        // Let the readers take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.output.lock().unwrap().clone()
    }

    pub async fn register(&self, email: &str) -> Result<User, Error> {
        let response = self
            .users
            .clone()
            .create_user(CreateUserRequest {
                email: email.into(),
                password: PASSWORD.into(),
                display_name: "Ada".into(),
                locale: "en".into(),
            })
            .await?;
        Ok(response.into_inner())
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<LoginResponse, Error> {
        let response = self
            .auth
            .clone()
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await?;
        Ok(response.into_inner())
    }

    pub async fn me(&self, token: &str) -> Result<User, Error> {
        Ok(self
            .users
            .clone()
            .get_me(bearer(GetMeRequest {}, token))
            .await?
            .into_inner())
    }

    pub async fn refresh(&self, token: &str) -> Result<(String, String), Error> {
        let pair = self
            .auth
            .clone()
            .refresh(RefreshRequest {
                refresh_token: token.into(),
            })
            .await?
            .into_inner();
        Ok((pair.access_token, pair.refresh_token))
    }

    /// auth's current signing key, read from the platform's own files, to forge tokens that
    /// only the claim checks can refuse.
    pub fn signing_key(&self) -> SigningKey {
        let master = MasterKey::load_or_create(&self.data_dir.join("keys/auth.data_key")).unwrap();
        let sealer = Sealer::new(&master, "auth.signing_keys");
        let db = rusqlite::Connection::open(self.data_dir.join("auth.db")).unwrap();
        let (kid, sealed): (String, Vec<u8>) = db
            .query_row(
                "SELECT kid, private_key FROM signing_keys ORDER BY created_at DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        let pem = sealer.open(&sealed, kid.as_bytes()).unwrap();
        SigningKey::from_pkcs8(kid, &pem).unwrap()
    }
}

pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Asserts that `result` failed with `code` and `reason`.
pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, Error>, code: Code, reason: &str) {
    let error = result.expect_err("refused");
    assert_eq!(error.kind().code(), code, "{error}");
    assert_eq!(error.reason(), reason, "{error}");
}

pub fn claims(sub: &str) -> Claims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Claims {
        iss: "shopmesh".into(),
        aud: "shopmesh".into(),
        sub: sub.into(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: "forged".into(),
        roles: vec!["admin".into()],
    }
}

/// The platform on embedded defaults in a fresh directory.
pub async fn embedded() -> (Platform, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Platform::start(dir.path(), &[]).await, dir)
}

/// The platform on the test bed's CQL server and Pulsar, or `None` when a local run has none.
pub async fn on_engines() -> Option<(Platform, tempfile::TempDir)> {
    on_engines_with(&[]).await
}

/// [`on_engines`] with more `key=value` settings.
pub async fn on_engines_with(extra: &[String]) -> Option<(Platform, tempfile::TempDir)> {
    let cql = shopmesh_testkit::testbed::address("SHOPMESH_TEST_CQL", "cql")?;
    let pulsar = shopmesh_testkit::testbed::address("SHOPMESH_TEST_PULSAR", "pulsar")?;
    let dir = tempfile::tempdir().unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let settings = [
        "storage.backend=\"cql\"".to_owned(),
        format!("storage.nodes=[\"{cql}\"]"),
        format!("storage.keyspace_prefix=\"e2e_{}_\"", &run[..10]),
        "events.backend=\"pulsar\"".to_owned(),
        format!("events.url=\"{pulsar}\""),
    ];
    let settings: Vec<String> = settings.into_iter().chain(extra.iter().cloned()).collect();
    Some((Platform::start(dir.path(), &settings).await, dir))
}

/// Logs the first administrator in through the edge; returns `Bearer …`.
pub async fn admin(platform: &Platform) -> String {
    login(
        platform,
        "admin@shopmesh.local",
        &platform.admin_password.clone().unwrap(),
    )
    .await
}

/// Registers a customer through the edge and logs them in; returns `Bearer …`.
pub async fn customer(platform: &Platform, email: &str) -> String {
    let register = serde_json::json!({"email": email, "password": PASSWORD, "display_name": "Ada"});
    let created = http(
        &platform.edge,
        "POST",
        "/v1/users",
        &[],
        &serde_json::to_vec(&register).unwrap(),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    login(platform, email, PASSWORD).await
}

async fn login(platform: &Platform, email: &str, password: &str) -> String {
    let login = http(
        &platform.edge,
        "POST",
        "/v1/auth/login",
        &[],
        &serde_json::to_vec(&serde_json::json!({"email": email, "password": password})).unwrap(),
    )
    .await;
    assert_eq!(login.status, 200, "{login:?}");
    format!("Bearer {}", login.json()["access_token"].as_str().unwrap())
}

/// Runs the test bed script (`up` or `down` of engines), as an operator would.
pub fn testbed(args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new(root.join("scripts/testbed"))
        .args(args)
        .current_dir(&root)
        .status()
        .expect("run scripts/testbed");
    assert!(status.success(), "scripts/testbed {args:?} failed");
}

/// An HTTP answer as a test reads it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end.
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the edge");
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let body = body.to_vec();
    // The edge may answer (413) before it has read a large body: write while reading. The
    // writer stays open until the answer is read, since a closed side means "client gone".
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&body).await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut raw = Vec::new();
    let _ = reader.read_to_end(&mut raw).await;
    let _ = writing.await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}
