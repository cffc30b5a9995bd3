//! Scenarios: a weighted mix of HTTP steps run by virtual users that keep state, described in
//! a small TOML file (`bench/scenarios/*.toml`; the format is in `docs/benchmarking.md`).
//!
//! A run has three phases. **Setup** (`[[setup]]`) runs once, in order, before the clock
//! starts: it creates what the mix needs (an administrator's token, products) and its captures
//! become variables every user sees. **User setup** (`[[user]]`) then runs for each virtual
//! user, also unmeasured, several users at once (registering and logging in, say); its
//! captures belong to that user. Then the **mix** (`[[step]]`) runs under the engine, open
//! loop at a rate (or closed loop): each due call takes an idle user and runs one step of the
//! mix, chosen by weight among the steps that user is ready for (those whose variables it has:
//! a step that needs an order id runs once the user has captured one). A step is one or more
//! requests on the same connection; its latency runs from the call's scheduled time to the end
//! of its last request, and each step has its own counts and histogram besides the run's.
//!
//! Templates (`{name}`) in paths, headers and bodies are resolved per request: variables
//! (`[vars]`, captures), `{env:NAME}` (read once at load), `{unique}` (unique per request and
//! run), `{n}` (the repetition of a setup entry), `{user}` (the user's number), `{run}` (unique
//! per run) and `{pick:a|b|c}` (one at random). A brace not followed by such a name is text, so
//! JSON bodies need no escaping. Captures take a value from a JSON answer by a dotted path
//! (`products.*.id`: `*` is an element at random, a number an index).
//!
//! Everything a file could get wrong is checked before anything is sent, and the error names
//! the file, line and field: unknown fields, a variable nothing defines, a step that could
//! never run.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Deserialize;
use toml::Spanned;

use crate::engine::{ErrorKind, Failure, Target};
use crate::error::Error;
use crate::http::{HttpConn, Origin, exchange, run_id, status_failure};

/// Variables every template may use without defining them.
const BUILTINS: &[&str] = &["unique", "n", "user", "run"];

/// How long one set-up request may take: set-up is not measured, but a server that never
/// answers must not hang the run. Generous, as registering users queues for password hashing.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest answer a capture reads; a larger body fails the capture.
const MAX_CAPTURE_BODY: usize = 8 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    load: LoadSpec,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    setup: Vec<Spanned<RequestSpec>>,
    #[serde(default)]
    user: Vec<Spanned<RequestSpec>>,
    #[serde(default)]
    step: Vec<Spanned<StepSpec>>,
}

/// The load a scenario is meant to run at; each can be overridden on the command line.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Steps per second, open loop.
    pub rate: Option<f64>,
    #[serde(default, with = "humantime_option")]
    pub duration: Option<Duration>,
    pub connections: Option<usize>,
    pub streams: Option<usize>,
    /// Virtual users; at least one per in-flight step.
    pub users: Option<usize>,
    #[serde(default, with = "humantime_option")]
    pub timeout: Option<Duration>,
    pub h2: Option<bool>,
}

mod humantime_option {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|text| {
            humantime::parse_duration(&text).map_err(|e| {
                serde::de::Error::custom(format!("{text:?} is not a duration like 30s: {e}"))
            })
        })
        .transpose()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    name: String,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    requests: Vec<Spanned<RequestSpec>>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A JSON body written as TOML; its strings are templates.
    #[serde(default)]
    json: Option<toml::Value>,
    /// A body as text, a template.
    #[serde(default)]
    body: Option<String>,
    /// Variable name → path into the JSON answer.
    #[serde(default)]
    capture: BTreeMap<String, String>,
    /// The statuses that count as success; any 1xx–3xx without it.
    #[serde(default)]
    expect: Vec<u16>,
    /// `[[setup]]` only: send this many times, `{n}` counting from 0.
    #[serde(default)]
    repeat: Option<u64>,
}

fn get() -> String {
    "GET".to_owned()
}

// ---------------------------------------------------------------------------------------------
// Templates.

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(String),
    Pick(Vec<String>),
}

/// A string with placeholders, parsed once.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Piece>);

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Template {
    /// Parses `text`; `{env:NAME}` is read from `env` now.
    fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let inner = after.find('}').map(|close| &after[..close]);
            let piece = match inner {
                Some(name) if is_name(name) => Some(Piece::Var(name.to_owned())),
                Some(inner) if inner.starts_with("env:") => {
                    let name = &inner[4..];
                    if !is_name(name) {
                        return Err(format!("{{{inner}}}: not an environment variable name"));
                    }
                    let value = env(name)
                        .ok_or_else(|| format!("the environment variable {name} is not set"))?;
                    Some(Piece::Text(value))
                }
                Some(inner) if inner.starts_with("pick:") => {
                    let choices: Vec<String> = inner[5..].split('|').map(str::to_owned).collect();
                    if choices.iter().any(String::is_empty) {
                        return Err(format!("{{{inner}}}: an empty choice"));
                    }
                    Some(Piece::Pick(choices))
                }
                // Not a placeholder (e.g. the brace of a JSON object): text.
                _ => None,
            };
            match (piece, inner) {
                (Some(piece), Some(inner)) => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                    rest = &after[inner.len() + 1..];
                }
                _ => {
                    literal.push('{');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        // Adjacent texts (an env value next to text) merge, so a constant is one piece.
        let mut merged: Vec<Piece> = Vec::with_capacity(pieces.len());
        for piece in pieces {
            match (merged.last_mut(), piece) {
                (Some(Piece::Text(before)), Piece::Text(text)) => before.push_str(&text),
                (_, piece) => merged.push(piece),
            }
        }
        Ok(Self(merged))
    }

    /// The variables it uses, builtins included.
    fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|piece| match piece {
            Piece::Var(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// The text, with each substituted value passed through `escape`.
    fn render(&self, scope: &mut Scope<'_>, escape: fn(&str) -> String) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(name) => out.push_str(&escape(&scope.get(name)?)),
                Piece::Pick(choices) => {
                    let choice = &choices[scope.rng.random_range(0..choices.len())];
                    out.push_str(&escape(choice));
                }
            }
        }
        Ok(out)
    }
}

fn verbatim(value: &str) -> String {
    value.to_owned()
}

/// A value substituted into a path or query: everything but RFC 3986's unreserved characters
/// percent-encoded, so that a captured value cannot change the url's structure.
fn url_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A JSON body whose strings are templates.
#[derive(Debug, Clone, PartialEq)]
enum JsonTemplate {
    Value(serde_json::Value),
    Text(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    fn parse(
        value: serde_json::Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        Ok(match value {
            serde_json::Value::String(text) => {
                let template = Template::parse(&text, env)?;
                match template.0.as_slice() {
                    [] => Self::Value(serde_json::Value::String(String::new())),
                    [Piece::Text(text)] => Self::Value(serde_json::Value::String(text.clone())),
                    _ => Self::Text(template),
                }
            }
            serde_json::Value::Array(items) => Self::Array(
                items
                    .into_iter()
                    .map(|item| Self::parse(item, env))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(fields) => Self::Object(
                fields
                    .into_iter()
                    .map(|(key, value)| Ok((key, Self::parse(value, env)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Self::Value(other),
        })
    }

    fn vars<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Self::Value(_) => {}
            Self::Text(template) => out.extend(template.vars()),
            Self::Array(items) => items.iter().for_each(|item| item.vars(out)),
            Self::Object(fields) => fields.iter().for_each(|(_, value)| value.vars(out)),
        }
    }

    fn render(&self, scope: &mut Scope<'_>) -> Result<serde_json::Value, String> {
        Ok(match self {
            Self::Value(value) => value.clone(),
            Self::Text(template) => serde_json::Value::String(template.render(scope, verbatim)?),
            Self::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|item| item.render(scope))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Object(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(key, value)| Ok((key.clone(), value.render(scope)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// Where a template's variables come from while one request is built.
struct Scope<'a> {
    globals: &'a HashMap<String, String>,
    user: Option<(usize, &'a HashMap<String, String>)>,
    n: Option<u64>,
    run: &'a str,
    unique: &'a AtomicU64,
    rng: &'a mut StdRng,
}

impl Scope<'_> {
    fn get(&self, name: &str) -> Result<String, String> {
        match name {
            "unique" => Ok(format!(
                "{}-{}",
                self.run,
                self.unique.fetch_add(1, Ordering::Relaxed)
            )),
            "run" => Ok(self.run.to_owned()),
            "n" => self
                .n
                .map(|n| n.to_string())
                .ok_or_else(|| "{n} is only set in a repeated [[setup]] entry".to_owned()),
            "user" => self
                .user
                .map(|(index, _)| index.to_string())
                .ok_or_else(|| "{user} is only set for a virtual user".to_owned()),
            _ => self
                .user
                .and_then(|(_, vars)| vars.get(name))
                .or_else(|| self.globals.get(name))
                .cloned()
                .ok_or_else(|| format!("{{{name}}} has no value yet")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Captures.

/// A dotted path into a JSON answer: keys, indexes, `*` for an element at random.
#[derive(Debug, Clone, PartialEq)]
struct Capture {
    var: String,
    path: Vec<Segment>,
    text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
    Any,
}

impl Capture {
    fn parse(var: &str, path: &str) -> Result<Self, String> {
        if !is_name(var) || BUILTINS.contains(&var) {
            return Err(format!(
                "capture `{var}`: a variable name is letters, digits and _, and not one of {}",
                BUILTINS.join(", ")
            ));
        }
        let segments = path
            .split('.')
            .map(|segment| match segment {
                "" => Err(format!(
                    "capture `{var}`: the path {path:?} has an empty part"
                )),
                "*" => Ok(Segment::Any),
                _ => Ok(segment
                    .parse()
                    .map_or_else(|_| Segment::Key(segment.to_owned()), Segment::Index)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            var: var.to_owned(),
            path: segments,
            text: path.to_owned(),
        })
    }

    /// The value at the path, as text (strings as they are, anything else as JSON).
    fn take(&self, answer: &serde_json::Value, rng: &mut StdRng) -> Option<String> {
        let mut at = answer;
        for segment in &self.path {
            at = match (segment, at) {
                (Segment::Key(key), serde_json::Value::Object(fields)) => fields.get(key)?,
                (Segment::Index(index), serde_json::Value::Array(items)) => items.get(*index)?,
                (Segment::Any, serde_json::Value::Array(items)) if !items.is_empty() => {
                    &items[rng.random_range(0..items.len())]
                }
                _ => return None,
            };
        }
        match at {
            serde_json::Value::String(text) => Some(text.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checked scenario.

/// One request of a setup entry or a step, ready to render.
#[derive(Debug, Clone)]
struct RequestPlan {
    /// For messages: `setup "products"`, `step "checkout", request 2`.
    what: String,
    method: Method,
    path: Template,
    headers: Vec<(HeaderName, Template)>,
    body: Body,
    captures: Vec<Capture>,
    expect: Vec<u16>,
    repeat: u64,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Text(Template),
    Json(JsonTemplate),
}

impl RequestPlan {
    fn vars(&self) -> Vec<&str> {
        let mut vars: Vec<&str> = self.path.vars().collect();
        for (_, value) in &self.headers {
            vars.extend(value.vars());
        }
        match &self.body {
            Body::None => {}
            Body::Text(template) => vars.extend(template.vars()),
            Body::Json(json) => json.vars(&mut vars),
        }
        vars
    }

    fn render(
        &self,
        scope: &mut Scope<'_>,
        origin: &Origin,
    ) -> Result<http::Request<http_body_util::Full<Bytes>>, String> {
        let path = self.path.render(scope, url_escape)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let value = value.render(scope, verbatim)?;
            let value = HeaderValue::try_from(value)
                .map_err(|_| format!("header {name}: not a valid header value"))?;
            headers.append(name.clone(), value);
        }
        let body = match &self.body {
            Body::None => Bytes::new(),
            Body::Text(template) => Bytes::from(template.render(scope, verbatim)?),
            Body::Json(json) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Bytes::from(serde_json::to_vec(&json.render(scope)?).map_err(|e| e.to_string())?)
            }
        };
        origin.request(self.method.clone(), &path, headers, body)
    }

    /// Whether `status` is a success for this request.
    fn accepts(&self, status: StatusCode) -> Result<(), Failure> {
        if self.expect.is_empty() {
            return status_failure(status).map_or(Ok(()), Err);
        }
        if self.expect.contains(&status.as_u16()) {
            return Ok(());
        }
        Err(Failure {
            kind: ErrorKind::Status((status.as_u16() / 100) as u8),
            broken: false,
        })
    }
}

/// One step of the mix.
#[derive(Debug, Clone)]
struct StepPlan {
    name: String,
    weight: f64,
    requests: Vec<RequestPlan>,
    /// Variables only steps capture that this step needs before it can run.
    needs: Vec<String>,
}

/// A scenario file, checked and ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub load: LoadSpec,
    vars: BTreeMap<String, String>,
    setup: Vec<RequestPlan>,
    user: Vec<RequestPlan>,
    steps: Vec<StepPlan>,
}

/// Where in the file: `1-based line`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Scenario {
    /// Reads and checks a scenario file; `{env:NAME}` comes from the process environment.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, &|name| std::env::var(name).ok())
    }

    /// Checks `text` as the contents of `path`.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let invalid = |line: Option<usize>, reason: String| Error::Scenario {
            file: path.display().to_string(),
            line,
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            invalid(line, e.message().trim().to_owned())
        })?;

        let mut defined: BTreeSet<String> = BUILTINS.iter().map(|s| (*s).to_owned()).collect();
        for name in file.vars.keys() {
            if !is_name(name) || BUILTINS.contains(&name.as_str()) {
                return Err(invalid(
                    None,
                    format!("[vars] {name}: a name is letters, digits and _, and not a builtin"),
                ));
            }
            defined.insert(name.clone());
        }

        let plan = |spec: &Spanned<RequestSpec>, what: String, repeat_allowed: bool| {
            let line = line_of(text, spec.span().start);
            plan_request(spec.get_ref(), what, repeat_allowed, env)
                .map_err(|reason| invalid(Some(line), reason))
                .map(|plan| (plan, line))
        };

        // Setup sees [vars] and what earlier setup entries captured.
        let mut setup = Vec::new();
        for (index, spec) in file.setup.iter().enumerate() {
            let what = spec.get_ref().name.as_ref().map_or_else(
                || format!("[[setup]] #{}", index + 1),
                |name| format!("[[setup]] {name:?}"),
            );
            let (request, line) = plan(spec, what, true)?;
            check_defined(&request, &defined, &[], "user")
                .map_err(|reason| invalid(Some(line), reason))?;
            defined.extend(request.captures.iter().map(|c| c.var.clone()));
            setup.push(request);
        }
        // A user's setup also sees what the user's earlier requests captured.
        let mut user = Vec::new();
        for (index, spec) in file.user.iter().enumerate() {
            let what = spec.get_ref().name.as_ref().map_or_else(
                || format!("[[user]] #{}", index + 1),
                |name| format!("[[user]] {name:?}"),
            );
            let (request, line) = plan(spec, what, false)?;
            check_defined(&request, &defined, &[], "n")
                .map_err(|reason| invalid(Some(line), reason))?;
            defined.extend(request.captures.iter().map(|c| c.var.clone()));
            user.push(request);
        }

        // Steps may also use what any step captures: they run once the user has it.
        let captured_by_steps: BTreeSet<String> = file
            .step
            .iter()
            .flat_map(|step| step.get_ref().requests.iter())
            .flat_map(|request| request.get_ref().capture.keys().cloned())
            .filter(|var| !defined.contains(var))
            .collect();
        if file.step.is_empty() {
            return Err(invalid(None, "no [[step]]: the mix is empty".to_owned()));
        }
        let mut steps = Vec::new();
        let mut names = BTreeSet::new();
        for spec in &file.step {
            let line = line_of(text, spec.span().start);
            let step = spec.get_ref();
            let at =
                |reason: String| invalid(Some(line), format!("step {:?}: {reason}", step.name));
            if !names.insert(step.name.clone()) {
                return Err(at("another step has this name".to_owned()));
            }
            if !(step.weight.is_finite() && step.weight > 0.0) {
                return Err(at("weight must be a positive number".to_owned()));
            }
            if step.requests.is_empty() {
                return Err(at("no [[step.requests]]".to_owned()));
            }
            let mut requests = Vec::new();
            let mut needs = BTreeSet::new();
            let mut earlier: Vec<String> = Vec::new();
            for (index, spec) in step.requests.iter().enumerate() {
                let what = format!("step {:?}, request {}", step.name, index + 1);
                let (request, line) = plan(spec, what, false)?;
                for var in request.vars() {
                    if defined.contains(var) || earlier.iter().any(|e| e == var) {
                        if var == "n" {
                            return Err(invalid(
                                Some(line),
                                format!("{}: {{n}} is only set in [[setup]]", request.what),
                            ));
                        }
                        continue;
                    }
                    if captured_by_steps.contains(var) {
                        needs.insert(var.to_owned());
                    } else {
                        return Err(invalid(Some(line), undefined(&request.what, var)));
                    }
                }
                earlier.extend(request.captures.iter().map(|c| c.var.clone()));
                requests.push(request);
            }
            steps.push(StepPlan {
                name: step.name.clone(),
                weight: step.weight,
                requests,
                needs: needs.into_iter().collect(),
            });
        }
        // Users start with only what the setups gave them: some step must be able to run then,
        // and each step's needs must be captured by some other step.
        if steps.iter().all(|step| !step.needs.is_empty()) {
            return Err(invalid(
                None,
                "every step needs a value that only steps capture, so no step can run first"
                    .to_owned(),
            ));
        }
        for step in &steps {
            for need in &step.needs {
                let elsewhere = steps.iter().any(|other| {
                    other.name != step.name
                        && other
                            .requests
                            .iter()
                            .any(|r| r.captures.iter().any(|c| &c.var == need))
                });
                if !elsewhere {
                    return Err(invalid(
                        None,
                        format!(
                            "step {:?} needs {{{need}}}, which only the step itself captures, \
                             so it can never run",
                            step.name
                        ),
                    ));
                }
            }
        }

        Ok(Self {
            name: file.name,
            description: file.description,
            file: path.to_owned(),
            load: file.load,
            vars: file.vars,
            setup,
            user,
            steps,
        })
    }

    /// Requests the setup sends (repetitions included), and requests per user.
    pub fn setup_size(&self) -> (u64, usize) {
        (
            self.setup.iter().map(|request| request.repeat).sum(),
            self.user.len(),
        )
    }

    /// The steps' names, in the file's order.
    pub fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|step| step.name.clone()).collect()
    }

    /// The steps' weights, in the file's order.
    pub fn step_weights(&self) -> Vec<f64> {
        self.steps.iter().map(|step| step.weight).collect()
    }

    /// Overrides a `[vars]` value (`--var name=value`).
    pub fn set_var(&mut self, name: &str, value: &str) -> Result<(), Error> {
        if !self.vars.contains_key(name) {
            return Err(Error::Scenario {
                file: self.file.display().to_string(),
                line: None,
                reason: format!("--var {name}: no such variable in [vars]"),
            });
        }
        self.vars.insert(name.to_owned(), value.to_owned());
        Ok(())
    }
}

fn undefined(what: &str, var: &str) -> String {
    format!(
        "{what} uses {{{var}}}, which neither [vars], an earlier setup capture, a [[user]] \
         capture nor any step's capture defines"
    )
}

/// Checks that `request` uses only `defined` variables (minus `forbidden`, a builtin not set
/// in that phase).
fn check_defined(
    request: &RequestPlan,
    defined: &BTreeSet<String>,
    earlier: &[String],
    forbidden: &str,
) -> Result<(), String> {
    for var in request.vars() {
        if var == forbidden {
            return Err(format!("{}: {{{var}}} is not set here", request.what));
        }
        if !defined.contains(var) && !earlier.iter().any(|e| e == var) {
            return Err(undefined(&request.what, var));
        }
    }
    Ok(())
}

fn plan_request(
    spec: &RequestSpec,
    what: String,
    repeat_allowed: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RequestPlan, String> {
    let at = |reason: String| format!("{what}: {reason}");
    let method = Method::from_bytes(spec.method.to_uppercase().as_bytes())
        .map_err(|_| at(format!("method: {:?} is not an HTTP method", spec.method)))?;
    if !spec.path.starts_with('/') {
        return Err(at(format!("path: {:?} must start with /", spec.path)));
    }
    let path = Template::parse(&spec.path, env).map_err(|e| at(format!("path: {e}")))?;
    let mut headers = Vec::new();
    for (name, value) in &spec.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| at(format!("headers: {name:?} is not a header name")))?;
        let value = Template::parse(value, env).map_err(|e| at(format!("headers.{name}: {e}")))?;
        headers.push((header, value));
    }
    let body = match (&spec.json, &spec.body) {
        (Some(_), Some(_)) => return Err(at("give json or body, not both".to_owned())),
        (Some(json), None) => {
            let value = serde_json::to_value(json).map_err(|e| at(format!("json: {e}")))?;
            Body::Json(JsonTemplate::parse(value, env).map_err(|e| at(format!("json: {e}")))?)
        }
        (None, Some(text)) => {
            Body::Text(Template::parse(text, env).map_err(|e| at(format!("body: {e}")))?)
        }
        (None, None) => Body::None,
    };
    let captures = spec
        .capture
        .iter()
        .map(|(var, path)| Capture::parse(var, path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(at)?;
    if let Some(bad) = spec.expect.iter().find(|s| !(100..=599).contains(*s)) {
        return Err(at(format!("expect: {bad} is not an HTTP status")));
    }
    let repeat = match spec.repeat {
        Some(_) if !repeat_allowed => {
            return Err(at("repeat is only allowed in [[setup]]".to_owned()));
        }
        Some(0) => return Err(at("repeat must be at least 1".to_owned())),
        Some(n) => n,
        None => 1,
    };
    Ok(RequestPlan {
        what,
        method,
        path,
        headers,
        body,
        captures,
        expect: spec.expect.clone(),
        repeat,
    })
}

// ---------------------------------------------------------------------------------------------
// Running.

/// A virtual user: its number, what it captured, its own random numbers.
#[derive(Debug)]
struct User {
    index: usize,
    vars: HashMap<String, String>,
    rng: StdRng,
}

/// A scenario with its setup done, ready for the engine.
pub struct ScenarioTarget {
    origin: Origin,
    scenario: Scenario,
    globals: HashMap<String, String>,
    /// Idle users, the longest idle first.
    idle: Mutex<VecDeque<User>>,
    run: String,
    unique: AtomicU64,
    /// How long the setup took.
    pub setup_time: Duration,
    pub users: usize,
}

impl std::fmt::Debug for ScenarioTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScenarioTarget")
            .field("origin", &self.origin)
            .field("scenario", &self.scenario.name)
            .field("users", &self.users)
            .finish()
    }
}

/// Opens a connection for the setup.
async fn open(origin: &Origin) -> Result<HttpConn, Error> {
    origin.connect().await.map_err(|reason| Error::Connect {
        target: origin.base().to_owned(),
        reason,
    })
}

/// What the users' setup shares between its connections.
struct UserSetup<'a> {
    origin: &'a Origin,
    requests: &'a [RequestPlan],
    globals: &'a HashMap<String, String>,
    run: &'a str,
    unique: &'a AtomicU64,
    /// The next user to set up.
    next: AtomicU64,
    users: usize,
    seed: u64,
    made: Mutex<Vec<User>>,
}

impl UserSetup<'_> {
    /// Sets up users one after the other on a connection of its own, until none is left.
    async fn work(&self) -> Result<(), Error> {
        let conn = open(self.origin).await?;
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed) as usize;
            if index >= self.users {
                return Ok(());
            }
            let mut user = User {
                index,
                vars: HashMap::new(),
                // Each user its own sequence, the same for the same seed.
                rng: StdRng::seed_from_u64(
                    self.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ),
            };
            for request in self.requests {
                let mut scope = Scope {
                    globals: self.globals,
                    user: Some((index, &user.vars)),
                    n: None,
                    run: self.run,
                    unique: self.unique,
                    rng: &mut user.rng,
                };
                let captured = send(self.origin, &conn, request, &mut scope)
                    .await
                    .map_err(|reason| {
                        Error::Setup(format!("{} (user {index}): {reason}", request.what))
                    })?;
                user.vars.extend(captured);
            }
            self.made
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(user);
        }
    }
}

/// Why one request of the setup failed.
fn setup_failure(request: &RequestPlan, n: Option<u64>, reason: String) -> Error {
    let which = match n {
        Some(n) if request.repeat > 1 => format!(" (repetition {n} of {})", request.repeat),
        _ => String::new(),
    };
    Error::Setup(format!("{}{which}: {reason}", request.what))
}

impl ScenarioTarget {
    /// Runs the setup and every user's setup (`connections` users at a time), so that the
    /// mix can start.
    pub async fn prepare(
        origin: Origin,
        scenario: Scenario,
        users: usize,
        connections: usize,
        seed: u64,
    ) -> Result<Self, Error> {
        let started = std::time::Instant::now();
        let run = run_id();
        let unique = AtomicU64::new(0);
        let mut globals: HashMap<String, String> = scenario.vars.clone().into_iter().collect();
        let mut rng = StdRng::seed_from_u64(seed);
        if !scenario.setup.is_empty() {
            let conn = open(&origin).await?;
            for request in &scenario.setup {
                for n in 0..request.repeat {
                    let mut scope = Scope {
                        globals: &globals,
                        user: None,
                        n: Some(n),
                        run: &run,
                        unique: &unique,
                        rng: &mut rng,
                    };
                    let captured = send(&origin, &conn, request, &mut scope)
                        .await
                        .map_err(|reason| setup_failure(request, Some(n), reason))?;
                    globals.extend(captured);
                }
            }
        }

        // Users are set up several at a time (registering hashes a password: slow on purpose).
        let shared = UserSetup {
            origin: &origin,
            requests: &scenario.user,
            globals: &globals,
            run: &run,
            unique: &unique,
            next: AtomicU64::new(0),
            users,
            seed,
            made: Mutex::new(Vec::with_capacity(users)),
        };
        let parallel = connections.clamp(1, users.max(1));
        futures::future::try_join_all((0..parallel).map(|_| shared.work())).await?;
        let mut made = shared.made.into_inner().unwrap_or_else(|e| e.into_inner());
        made.sort_by_key(|user| user.index);
        Ok(Self {
            origin,
            scenario,
            globals,
            idle: Mutex::new(made.into()),
            run,
            unique,
            setup_time: started.elapsed(),
            users,
        })
    }

    fn take_user(&self) -> Option<UserGuard<'_>> {
        let user = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()?;
        Some(UserGuard {
            pool: &self.idle,
            user: Some(user),
        })
    }

    /// A step for `user`, by weight among those it has the variables for.
    fn pick(&self, user: &mut User) -> Option<usize> {
        let ready = |step: &StepPlan| step.needs.iter().all(|need| user.vars.contains_key(need));
        let total: f64 = self
            .scenario
            .steps
            .iter()
            .filter(|s| ready(s))
            .map(|s| s.weight)
            .sum();
        if total <= 0.0 {
            return None;
        }
        let mut point = user.rng.random_range(0.0..total);
        let mut last = None;
        for (index, step) in self.scenario.steps.iter().enumerate() {
            if !ready(step) {
                continue;
            }
            last = Some(index);
            if point < step.weight {
                return Some(index);
            }
            point -= step.weight;
        }
        last
    }
}

/// Puts a user back among the idle ones however its step ended (also when the engine drops
/// the step at its timeout).
struct UserGuard<'a> {
    pool: &'a Mutex<VecDeque<User>>,
    user: Option<User>,
}

impl Drop for UserGuard<'_> {
    fn drop(&mut self) {
        if let Some(user) = self.user.take() {
            self.pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(user);
        }
    }
}

/// Sends one request of a setup; returns what it captured, or why it failed.
async fn send(
    origin: &Origin,
    conn: &HttpConn,
    request: &RequestPlan,
    scope: &mut Scope<'_>,
) -> Result<Vec<(String, String)>, String> {
    let built = request.render(scope, origin)?;
    let (method, uri) = (built.method().clone(), built.uri().clone());
    let (status, body) = tokio::time::timeout(SETUP_TIMEOUT, exchange(conn, built))
        .await
        .map_err(|_| format!("{method} {uri}: no answer within {SETUP_TIMEOUT:?}"))?
        .map_err(|failure| format!("{method} {uri}: {}", failure.kind.name()))?;
    if request.accepts(status).is_err() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("{method} {uri} answered {status}: {text}"));
    }
    captures(request, &body, scope.rng)
        .map_err(|reason| format!("{method} {uri} answered {status}: {reason}"))
}

/// Takes `request`'s captures from an answer body.
fn captures(
    request: &RequestPlan,
    body: &[u8],
    rng: &mut StdRng,
) -> Result<Vec<(String, String)>, String> {
    if request.captures.is_empty() {
        return Ok(Vec::new());
    }
    if body.len() > MAX_CAPTURE_BODY {
        return Err(format!(
            "the answer is larger than {MAX_CAPTURE_BODY} bytes"
        ));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    request
        .captures
        .iter()
        .map(|capture| {
            capture
                .take(&answer, rng)
                .map(|value| (capture.var.clone(), value))
                .ok_or_else(|| {
                    format!(
                        "no value at {:?} to capture as {}",
                        capture.text, capture.var
                    )
                })
        })
        .collect()
}

fn capture_failure() -> Failure {
    Failure {
        kind: ErrorKind::Capture,
        broken: false,
    }
}

impl Target for ScenarioTarget {
    type Conn = HttpConn;

    fn multiplexed(&self) -> bool {
        self.origin.h2()
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.origin.base(), self.scenario.name)
    }

    async fn connect(&self) -> Result<HttpConn, String> {
        self.origin.connect().await
    }

    fn usable(&self, conn: &HttpConn) -> bool {
        conn.usable()
    }

    async fn call(&self, conn: &HttpConn) -> Result<(), Failure> {
        let mut step = None;
        self.call_step(conn, &mut step).await
    }

    fn steps(&self) -> Vec<String> {
        self.scenario.step_names()
    }

    async fn call_step(&self, conn: &HttpConn, step: &mut Option<usize>) -> Result<(), Failure> {
        // There are at least as many users as calls in flight, so one is always idle.
        let mut guard = self.take_user().ok_or_else(capture_failure)?;
        let user = guard.user.as_mut().ok_or_else(capture_failure)?;
        let index = self.pick(user).ok_or_else(capture_failure)?;
        *step = Some(index);
        for request in &self.scenario.steps[index].requests {
            let built = {
                let mut scope = Scope {
                    globals: &self.globals,
                    user: Some((user.index, &user.vars)),
                    n: None,
                    run: &self.run,
                    unique: &self.unique,
                    rng: &mut user.rng,
                };
                request
                    .render(&mut scope, &self.origin)
                    .map_err(|_| capture_failure())?
            };
            let (status, body) = exchange(conn, built).await?;
            request.accepts(status)?;
            let captured =
                captures(request, &body, &mut user.rng).map_err(|_| capture_failure())?;
            user.vars.extend(captured);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "ADMIN_PASSWORD").then(|| "s3cret".to_owned())
    }

    fn parse(text: &str) -> Result<Scenario, Error> {
        Scenario::parse(Path::new("test.toml"), text, &env)
    }

    fn scope<'a>(
        globals: &'a HashMap<String, String>,
        unique: &'a AtomicU64,
        rng: &'a mut StdRng,
    ) -> Scope<'a> {
        Scope {
            globals,
            user: None,
            n: Some(7),
            run: "r1",
            unique,
            rng,
        }
    }

    const STOREFRONT: &str = r#"
name = "mini"

[load]
rate = 20
duration = "5s"
users = 4

[vars]
password = "pw"

[[setup]]
name = "admin"
method = "POST"
path = "/v1/auth/login"
json = { email = "admin@example.com", password = "{env:ADMIN_PASSWORD}" }
capture = { admin = "access_token" }

[[user]]
method = "POST"
path = "/v1/auth/login"
json = { email = "u{user}@example.com", password = "{password}" }
capture = { token = "access_token" }

[[step]]
name = "browse"
weight = 3
[[step.requests]]
path = "/v1/products?page_size=5"
capture = { product_id = "products.*.id" }

[[step]]
name = "buy"
[[step.requests]]
method = "POST"
path = "/v1/orders"
headers = { authorization = "Bearer {token}", idempotency-key = "{unique}" }
json = { items = [{ product_id = "{product_id}", quantity = 1 }] }
capture = { order_id = "id" }
[[step.requests]]
path = "/v1/orders/{order_id}"
headers = { authorization = "Bearer {token}" }
"#;

    #[test]
    fn a_scenario_is_checked_and_planned() {
        let scenario = parse(STOREFRONT).unwrap();
        assert_eq!(scenario.name, "mini");
        assert_eq!(scenario.load.rate, Some(20.0));
        assert_eq!(scenario.load.duration, Some(Duration::from_secs(5)));
        assert_eq!(scenario.step_names(), ["browse", "buy"]);
        assert_eq!(scenario.step_weights(), [3.0, 1.0]);
        assert!(scenario.steps[0].needs.is_empty());
        // The order id is captured within the step; only the product id must come first.
        assert_eq!(scenario.steps[1].needs, ["product_id"]);
        // The environment is read at load.
        let Body::Json(JsonTemplate::Object(fields)) = &scenario.setup[0].body else {
            panic!("a JSON body")
        };
        assert_eq!(
            fields[1].1,
            JsonTemplate::Value(serde_json::Value::String("s3cret".to_owned()))
        );
    }

    #[test]
    fn the_checked_in_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let scenario = Scenario::parse(&path, &text, &|_| Some("x".to_owned()))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(scenario.load.rate.is_some(), "{}", path.display());
            names.push(scenario.name);
        }
        names.sort();
        assert_eq!(names, ["login-flood", "search", "storefront"]);
    }

    #[test]
    fn mistakes_are_reported_with_their_line() {
        let cases: &[(&str, &str, Option<usize>)] = &[
            (
                "name = \"x\"\n[[step]]\nname = \"a\"\nwieght = 2\n",
                "wieght",
                Some(4),
            ),
            (
                "name = \"x\"\n\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"/p/{nope}\"\n",
                "{nope}",
                Some(5),
            ),
            (
                "name = \"x\"\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"p\"\n",
                "must start with /",
                Some(4),
            ),
            (
                "name = \"x\"\n[[setup]]\npath = \"/{env:MISSING}\"\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"/\"\n",
                "MISSING is not set",
                Some(2),
            ),
            (
                "name = \"x\"\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"/{id}\"\ncapture = { id = \"id\" }\n",
                "no step can run first",
                None,
            ),
            (
                "name = \"x\"\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"/\"\n\
                 [[step]]\nname = \"b\"\n[[step.requests]]\npath = \"/{id}\"\ncapture = { id = \"id\" }\n",
                "only the step itself captures",
                None,
            ),
            (
                "name = \"x\"\n[[step]]\nname = \"a\"\nweight = 0\n[[step.requests]]\npath = \"/\"\n",
                "weight must be a positive",
                Some(2),
            ),
            (
                "name = \"x\"\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"/\"\nrepeat = 3\n",
                "repeat is only allowed in [[setup]]",
                Some(4),
            ),
            (
                "name = \"x\"\n[[user]]\npath = \"/{n}\"\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"/\"\n",
                "{n} is not set here",
                Some(2),
            ),
            ("name = \"x\"\n", "no [[step]]", None),
            (
                "name = \"x\"\n[load]\nduration = \"soon\"\n[[step]]\nname = \"a\"\n[[step.requests]]\npath = \"/\"\n",
                "not a duration",
                Some(3),
            ),
        ];
        for (text, expected, line) in cases {
            let error = parse(text).unwrap_err();
            let Error::Scenario {
                line: got, reason, ..
            } = &error
            else {
                panic!("{error}")
            };
            assert!(error.to_string().contains(expected), "{error}");
            assert_eq!(got, line, "{reason}");
            assert!(error.to_string().starts_with("test.toml"), "{error}");
        }
    }

    #[test]
    fn templates_substitute_variables_and_leave_json_braces() {
        let template =
            Template::parse(r#"{"a": "{who}", "b": {x}}{pick:p|q}{unique}"#, &env).unwrap();
        assert_eq!(template.vars().collect::<Vec<_>>(), ["who", "x", "unique"]);
        let globals = HashMap::from([
            ("who".to_owned(), "me".to_owned()),
            ("x".to_owned(), "1".to_owned()),
        ]);
        let unique = AtomicU64::new(5);
        let mut rng = StdRng::seed_from_u64(1);
        let text = template
            .render(&mut scope(&globals, &unique, &mut rng), verbatim)
            .unwrap();
        assert!(text.starts_with(r#"{"a": "me", "b": 1}"#), "{text}");
        assert!(text.ends_with("r1-5"), "{text}");
        let picked = &text[r#"{"a": "me", "b": 1}"#.len()..text.len() - 4];
        assert!(picked == "p" || picked == "q", "{text}");
        // In a path, a value cannot change the url's structure.
        let path = Template::parse("/v1/products:search?q={who}&n={n}", &env).unwrap();
        let globals = HashMap::from([("who".to_owned(), "a b&c=d".to_owned())]);
        let rendered = path
            .render(&mut scope(&globals, &unique, &mut rng), url_escape)
            .unwrap();
        assert_eq!(rendered, "/v1/products:search?q=a%20b%26c%3Dd&n=7");
        let missing = Template::parse("{later}", &env).unwrap();
        assert!(
            missing
                .render(&mut scope(&globals, &unique, &mut rng), verbatim)
                .is_err()
        );
    }

    #[test]
    fn captures_follow_keys_indexes_and_random_elements() {
        let answer = serde_json::json!({
            "access_token": "t",
            "products": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
            "total": 3,
            "empty": [],
        });
        let mut rng = StdRng::seed_from_u64(3);
        let take =
            |path: &str, rng: &mut StdRng| Capture::parse("v", path).unwrap().take(&answer, rng);
        assert_eq!(take("access_token", &mut rng).as_deref(), Some("t"));
        assert_eq!(take("products.1.id", &mut rng).as_deref(), Some("b"));
        assert_eq!(take("total", &mut rng).as_deref(), Some("3"));
        let seen: BTreeSet<String> = (0..50)
            .filter_map(|_| take("products.*.id", &mut rng))
            .collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for missing in ["nope", "products.9.id", "empty.*", "total.x"] {
            assert_eq!(take(missing, &mut rng), None, "{missing}");
        }
        assert!(Capture::parse("unique", "x").is_err());
        assert!(Capture::parse("v", "a..b").is_err());
    }
}
