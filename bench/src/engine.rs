//! The load engine: sends requests to a [`Target`] open-loop at a constant rate or closed-loop
//! at peak, and records every outcome.
//!
//! **Open loop (`Mode::Rate`).** A dedicated OS thread, the *dispatcher*, releases request
//! tickets on a fixed timetable (`start + i / rate`), sleeping with the kernel's timer rather
//! than the runtime's 1 ms timer wheel so that the timetable is kept to within tens of
//! microseconds. Each ticket carries its scheduled send time. Workers (one per in-flight slot:
//! `connections × streams`) take tickets from one queue in order; when every worker is busy,
//! tickets wait in the queue and the timetable does not move. Latency is measured from the
//! scheduled time, so a server that stalls for a second is charged for every request that
//! should have been sent during that second, not only for the few that were in flight: the
//! coordinated-omission correction of wrk2. The time from the actual send is kept too
//! ([`Tally::service`]); the gap between the two is the queueing the server caused.
//!
//! Tickets still queued one timeout after the end of the run, or due while [`MAX_BACKLOG`]
//! tickets already wait, are not sent; they are reported as `unsent`, never silently dropped.
//! Until then a backlog is sent and charged its wait, so a generator that was briefly
//! descheduled near the end loses no request, and a run lasts at most the duration plus two
//! timeouts.
//!
//! **Closed loop (`Mode::Peak`).** Each worker sends its next request as soon as the previous
//! one has ended, until the duration is over. Latency is measured from the actual send; this
//! mode answers "how much can it take", not "how fast is it at a given load".
//!
//! **Connections.** Every connection is opened before the clock starts, so set-up is not
//! measured; the run fails at once if one cannot be opened. A connection that breaks during
//! the run is reopened by the next request that needs it, within that request's timeout and
//! counted in its latency. On a multiplexed protocol (h2, gRPC) `streams` workers share each
//! connection; on HTTP/1.1 each connection has exactly one worker.
//!
//! **Recording.** Each worker records into its own [`Tally`] behind an uncontended mutex; a
//! collector drains every tally once a second into the totals and the per-second timeline, and
//! prints the progress line. Latencies are recorded in microseconds.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::Error;

/// The highest latency recorded (one hour, in microseconds); longer ones are recorded as this
/// value.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The most open-loop requests that wait for a free connection at once (16 bytes each); due
/// requests beyond it are counted as unsent. Only a target far slower than the asked rate
/// fills it.
pub const MAX_BACKLOG: u64 = 1_000_000;

/// Significant figures of every histogram: values are exact to 0.1 %.
pub const SIGNIFICANT_FIGURES: u8 = 3;

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Open loop: this many requests per second on a fixed timetable.
    Rate(f64),
    /// Closed loop: as many as the in-flight slots can send back to back.
    Peak,
}

/// What load to offer, for how long, over how many connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub mode: Mode,
    pub duration: Duration,
    /// TCP connections to the target.
    pub connections: usize,
    /// Requests in flight on each connection at most (1 on HTTP/1.1).
    pub streams: usize,
    /// Per request, from the moment it is actually sent (including a reconnect it needs).
    pub timeout: Duration,
}

impl Load {
    /// Checks that the settings make sense for a target that is `multiplexed` or not.
    pub fn validate(&self, multiplexed: bool) -> Result<(), Error> {
        let invalid = |reason: &str| Err(Error::Settings(reason.to_owned()));
        if let Mode::Rate(rate) = self.mode
            && !(rate.is_finite() && rate > 0.0)
        {
            return invalid("the rate must be a positive number of requests per second");
        }
        if self.duration.is_zero() {
            return invalid("the duration must be longer than zero");
        }
        if self.timeout.is_zero() {
            return invalid("the timeout must be longer than zero");
        }
        if self.connections == 0 {
            return invalid("at least one connection is needed");
        }
        if self.streams == 0 {
            return invalid("at least one stream per connection is needed");
        }
        if self.streams > 1 && !multiplexed {
            return invalid(
                "HTTP/1.1 carries one request at a time per connection: use --h2 for --streams above 1",
            );
        }
        Ok(())
    }

    /// The number of requests that can be in flight at once.
    pub fn workers(&self) -> usize {
        self.connections * self.streams
    }
}

/// Why one request failed. Every failed request is counted under exactly one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be opened (refused, unreachable, or not within the timeout).
    Connect,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// An HTTP answer with a 4xx or 5xx status; the number is the class (4 or 5).
    Status(u8),
    /// A gRPC answer with a status other than OK.
    Grpc(tonic::Code),
    /// The connection or stream failed mid-request, or the answer was malformed.
    Transport,
    /// A scenario step's answer lacked a value the step captures (or the value could not be
    /// used in its next request).
    Capture,
}

impl ErrorKind {
    /// The stable name used as the key in results: `connect`, `timeout`, `status_4xx`,
    /// `grpc_unavailable`, `transport`.
    pub fn name(self) -> &'static str {
        use tonic::Code;
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Status(4) => "status_4xx",
            Self::Status(5) => "status_5xx",
            Self::Status(_) => "status_other",
            Self::Transport => "transport",
            Self::Capture => "capture",
            Self::Grpc(code) => match code {
                Code::Ok => "grpc_ok",
                Code::Cancelled => "grpc_cancelled",
                Code::Unknown => "grpc_unknown",
                Code::InvalidArgument => "grpc_invalid_argument",
                Code::DeadlineExceeded => "grpc_deadline_exceeded",
                Code::NotFound => "grpc_not_found",
                Code::AlreadyExists => "grpc_already_exists",
                Code::PermissionDenied => "grpc_permission_denied",
                Code::ResourceExhausted => "grpc_resource_exhausted",
                Code::FailedPrecondition => "grpc_failed_precondition",
                Code::Aborted => "grpc_aborted",
                Code::OutOfRange => "grpc_out_of_range",
                Code::Unimplemented => "grpc_unimplemented",
                Code::Internal => "grpc_internal",
                Code::Unavailable => "grpc_unavailable",
                Code::DataLoss => "grpc_data_loss",
                Code::Unauthenticated => "grpc_unauthenticated",
            },
        }
    }
}

/// A failed request as a target reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    /// The connection cannot carry another request and must be replaced.
    pub broken: bool,
}

/// Something to send requests to over connections of type `Conn`.
pub trait Target: Send + Sync + 'static {
    /// One open connection; clones share it.
    type Conn: Clone + Send + Sync + 'static;

    /// Whether one connection carries several requests at once (h2, gRPC). A timed-out request
    /// breaks a connection that is not multiplexed.
    fn multiplexed(&self) -> bool;

    /// What the run is aimed at, for error messages.
    fn describe(&self) -> String;

    /// Opens a connection. The error says why, for the message of a run that cannot start.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, String>> + Send;

    /// Whether `conn` can still carry a request; otherwise it is reopened first.
    fn usable(&self, conn: &Self::Conn) -> bool;

    /// Sends one request on `conn` and reads its whole answer.
    fn call(&self, conn: &Self::Conn) -> impl Future<Output = Result<(), Failure>> + Send;

    /// The names of the steps a call may run, for a target that mixes several kinds of
    /// request (a scenario); each gets its own counts and histogram. Empty when every call is
    /// alike.
    fn steps(&self) -> Vec<String> {
        Vec::new()
    }

    /// Like [`Target::call`], for a target with steps: writes the index of the step it runs
    /// into `step` as soon as it has chosen it, so that a call cut short by its timeout is
    /// still counted against its step.
    fn call_step(
        &self,
        conn: &Self::Conn,
        step: &mut Option<usize>,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        let _ = step;
        self.call(conn)
    }
}

/// What a worker has recorded of one step of a target with steps.
#[derive(Debug, Clone)]
pub struct StepTally {
    /// Of successful calls of this step, measured as [`Tally::latency`].
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
}

impl StepTally {
    fn new() -> Self {
        Self {
            latency: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Calls of this step that ended, successfully or not.
    pub fn requests(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    fn add(&mut self, other: &StepTally) {
        self.latency
            .add(&other.latency)
            .expect("histograms grow to take any recorded value");
        self.ok += other.ok;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }

    fn clear(&mut self) {
        self.latency.reset();
        self.ok = 0;
        self.errors.clear();
    }
}

/// What a worker has recorded since the collector last drained it.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Of successful requests, from the scheduled send time (open loop) or the actual one.
    pub latency: Histogram<u64>,
    /// Of successful requests, from the actual send time.
    pub service: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Open-loop tickets not sent because the run had ended.
    pub unsent: u64,
    /// Connections reopened during the run.
    pub reconnects: u64,
    /// When the last request was sent.
    pub last_sent: Option<Instant>,
    /// When the last request ended.
    pub last_done: Option<Instant>,
    /// Per step of a target with steps ([`Target::steps`]), in its order.
    pub steps: Vec<StepTally>,
}

impl Tally {
    fn new(steps: usize) -> Self {
        Self {
            latency: new_histogram(),
            service: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            unsent: 0,
            reconnects: 0,
            last_sent: None,
            last_done: None,
            steps: (0..steps).map(|_| StepTally::new()).collect(),
        }
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Requests that ended, successfully or not.
    pub fn requests(&self) -> u64 {
        self.ok + self.error_count()
    }

    fn add(&mut self, other: &Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms grow to take any recorded value");
        self.service
            .add(&other.service)
            .expect("histograms grow to take any recorded value");
        self.ok += other.ok;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.unsent += other.unsent;
        self.reconnects += other.reconnects;
        self.last_sent = self.last_sent.max(other.last_sent);
        self.last_done = self.last_done.max(other.last_done);
        for (mine, theirs) in self.steps.iter_mut().zip(&other.steps) {
            mine.add(theirs);
        }
    }

    /// Moves everything into `into` and starts afresh (keeping the histograms' memory).
    fn drain_into(&mut self, into: &mut Tally) {
        into.add(self);
        self.latency.reset();
        self.service.reset();
        self.ok = 0;
        self.errors.clear();
        self.unsent = 0;
        self.reconnects = 0;
        for step in &mut self.steps {
            step.clear();
        }
    }

    fn record(
        &mut self,
        result: Result<(), ErrorKind>,
        scheduled: Instant,
        sent: Instant,
        done: Instant,
        step: Option<usize>,
    ) {
        let step = step.and_then(|index| self.steps.get_mut(index));
        match result {
            Ok(()) => {
                self.ok += 1;
                record_us(&mut self.latency, micros(done - scheduled));
                record_us(&mut self.service, micros(done - sent));
                if let Some(step) = step {
                    step.ok += 1;
                    record_us(&mut step.latency, micros(done - scheduled));
                }
            }
            Err(kind) => {
                *self.errors.entry(kind.name()).or_default() += 1;
                if let Some(step) = step {
                    *step.errors.entry(kind.name()).or_default() += 1;
                }
            }
        }
        self.last_sent = Some(sent);
        self.last_done = Some(done);
    }
}

/// A histogram as every histogram of a run is made: from 1 µs, growing as larger values come
/// (a few tens of kilobytes for millisecond latencies, where fixed bounds up to an hour would
/// take close to 200 kB per histogram, and there are two per in-flight slot).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGNIFICANT_FIGURES).expect("the precision is valid")
}

fn record_us(histogram: &mut Histogram<u64>, us: u64) {
    // A growing histogram takes any value `micros` returns; should growing fail (out of
    // memory), the value is still counted, as the largest the histogram holds.
    if histogram.record(us).is_err() {
        histogram.saturating_record(us);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_LATENCY_US)
}

/// One second of a run, as the collector saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// Seconds since the start at the end of this interval.
    pub at: Duration,
    /// Requests that ended in this interval.
    pub requests: u64,
    pub errors: u64,
    /// Of the successful requests that ended in this interval, in microseconds.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub total: Tally,
    /// From the start of the clock to the end of the last request.
    pub elapsed: Duration,
    /// The time over which requests were sent: the duration, or longer if the last request
    /// left later (a backlog sent after the end).
    pub window: Duration,
    pub timeline: Vec<Second>,
}

impl Outcome {
    /// Requests that ended, successful or not, per second of the sending window. The window,
    /// not the elapsed time, so that the last answers' latency does not count as idle time.
    pub fn achieved_rate(&self) -> f64 {
        let seconds = self.window.as_secs_f64();
        if seconds > 0.0 {
            self.total.requests() as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Runs `load` against `target`; with `progress`, prints a line on stderr every second.
pub async fn run<T: Target>(target: Arc<T>, load: &Load, progress: bool) -> Result<Outcome, Error> {
    load.validate(target.multiplexed())?;

    let mut slots = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        let conn = target.connect().await.map_err(|reason| Error::Connect {
            target: target.describe(),
            reason,
        })?;
        slots.push(Arc::new(Slot::new(conn)));
    }

    let steps = target.steps().len();
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..load.workers())
        .map(|_| Arc::new(Mutex::new(Tally::new(steps))))
        .collect();

    let start = Instant::now();
    let end = start + load.duration;
    let mut workers = JoinSet::new();
    let mut dispatcher = None;
    match load.mode {
        Mode::Rate(rate) => {
            let (tickets, queue) = mpsc::unbounded_channel();
            let queue = Arc::new(Queue {
                tickets: tokio::sync::Mutex::new(queue),
                queued: AtomicU64::new(0),
            });
            let backlog = queue.clone();
            dispatcher = Some(
                std::thread::Builder::new()
                    .name("bench-dispatcher".to_owned())
                    .spawn(move || dispatch(start, end, rate, tickets, &backlog.queued))
                    .map_err(|e| Error::Settings(format!("starting the dispatcher: {e}")))?,
            );
            for (index, tally) in tallies.iter().enumerate() {
                let worker = Worker {
                    target: target.clone(),
                    slot: slots[index % load.connections].clone(),
                    tally: tally.clone(),
                    timeout: load.timeout,
                };
                workers.spawn(worker.open_loop(queue.clone(), end + load.timeout));
            }
        }
        Mode::Peak => {
            for (index, tally) in tallies.iter().enumerate() {
                let worker = Worker {
                    target: target.clone(),
                    slot: slots[index % load.connections].clone(),
                    tally: tally.clone(),
                    timeout: load.timeout,
                };
                workers.spawn(worker.closed_loop(end));
            }
        }
    }

    let mut collector = Collector {
        tallies,
        total: Tally::new(steps),
        interval: Tally::new(steps),
        timeline: Vec::new(),
        start,
        load: load.clone(),
        progress: progress.then(|| std::io::stderr().is_terminal()),
    };
    let mut all_done = pin!(async move {
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    });
    let mut next_tick = start + Duration::from_secs(1);
    loop {
        tokio::select! {
            () = &mut all_done => break,
            () = tokio::time::sleep_until(next_tick) => {
                collector.collect(next_tick, false);
                next_tick += Duration::from_secs(1);
            }
        }
    }
    collector.collect(Instant::now(), true);
    if let Some(dispatcher) = dispatcher {
        // The dispatcher stops at `end`, before the workers it feeds can have finished.
        collector.total.unsent += dispatcher
            .join()
            .map_err(|_| Error::Settings("the dispatcher thread panicked".to_owned()))?;
    }
    collector.finish_progress();

    let since_start =
        |at: Option<Instant>| at.map_or(Duration::ZERO, |at| at.saturating_duration_since(start));
    Ok(Outcome {
        elapsed: since_start(collector.total.last_done),
        window: since_start(collector.total.last_sent).max(load.duration),
        total: collector.total,
        timeline: collector.timeline,
    })
}

/// Releases one ticket (its scheduled send time) at each point of the timetable until `end`.
/// Runs on its own thread: `std::thread::sleep` keeps to the timetable far more closely than
/// the runtime's millisecond timer. When it wakes late it releases every ticket that is due.
///
/// At most [`MAX_BACKLOG`] tickets wait in the queue (`queued` counts them); a ticket due while
/// it is full is not queued. Returns how many were not, for the `unsent` count.
fn dispatch(
    start: Instant,
    end: Instant,
    rate: f64,
    tickets: mpsc::UnboundedSender<Instant>,
    queued: &AtomicU64,
) -> u64 {
    let start = start.into_std();
    let end = end.into_std();
    let mut index: u64 = 0;
    let mut dropped = 0;
    loop {
        let offset_ns = (index as f64 * 1e9 / rate).round() as u64;
        let scheduled = start + Duration::from_nanos(offset_ns);
        if scheduled >= end {
            return dropped;
        }
        let now = std::time::Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
            continue;
        }
        if queued.load(Ordering::Relaxed) >= MAX_BACKLOG {
            dropped += 1;
        } else {
            queued.fetch_add(1, Ordering::Relaxed);
            if tickets.send(Instant::from_std(scheduled)).is_err() {
                return dropped;
            }
        }
        index += 1;
    }
}

/// The due tickets, shared by the workers of an open-loop run.
struct Queue {
    tickets: tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>,
    /// Tickets sent and not yet taken.
    queued: AtomicU64,
}

/// One connection and the workers that share it.
struct Slot<C> {
    state: tokio::sync::Mutex<SlotState<C>>,
}

struct SlotState<C> {
    conn: Option<C>,
    /// Bumped at each reconnect, so that a worker only discards the connection it used.
    generation: u64,
}

impl<C: Clone> Slot<C> {
    fn new(conn: C) -> Self {
        Self {
            state: tokio::sync::Mutex::new(SlotState {
                conn: Some(conn),
                generation: 0,
            }),
        }
    }

    /// The open connection, reopened first if it is gone; with whether it was reopened.
    async fn get<T: Target<Conn = C>>(&self, target: &T) -> Result<(u64, C, bool), ErrorKind> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.conn
            && target.usable(conn)
        {
            return Ok((state.generation, conn.clone(), false));
        }
        state.conn = None;
        let conn = target.connect().await.map_err(|_| ErrorKind::Connect)?;
        state.generation += 1;
        state.conn = Some(conn.clone());
        Ok((state.generation, conn, true))
    }

    async fn discard(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.generation == generation {
            state.conn = None;
        }
    }
}

struct Worker<T: Target> {
    target: Arc<T>,
    slot: Arc<Slot<T::Conn>>,
    tally: Arc<Mutex<Tally>>,
    timeout: Duration,
}

impl<T: Target> Worker<T> {
    async fn open_loop(self, queue: Arc<Queue>, cutoff: Instant) {
        loop {
            // One worker at a time waits on the queue; the others wait for the lock, in order.
            let ticket = queue.tickets.lock().await.recv().await;
            let Some(scheduled) = ticket else { return };
            queue.queued.fetch_sub(1, Ordering::Relaxed);
            let sent = Instant::now();
            if sent >= cutoff {
                lock(&self.tally).unsent += 1;
                continue;
            }
            let (result, reconnected, step) = self.attempt().await;
            let done = Instant::now();
            let mut tally = lock(&self.tally);
            tally.reconnects += u64::from(reconnected);
            tally.record(result, scheduled, sent, done, step);
        }
    }

    async fn closed_loop(self, end: Instant) {
        loop {
            let sent = Instant::now();
            if sent >= end {
                return;
            }
            let (result, reconnected, step) = self.attempt().await;
            let done = Instant::now();
            let mut tally = lock(&self.tally);
            tally.reconnects += u64::from(reconnected);
            tally.record(result, sent, sent, done, step);
        }
    }

    /// One request within the timeout, reopening the connection first if needed; with
    /// whether it reopened and, for a target with steps, the step it ran.
    async fn attempt(&self) -> (Result<(), ErrorKind>, bool, Option<usize>) {
        let deadline = Instant::now() + self.timeout;
        let (generation, conn, reconnected) =
            match tokio::time::timeout_at(deadline, self.slot.get(&*self.target)).await {
                Ok(Ok(got)) => got,
                Ok(Err(kind)) => return (Err(kind), false, None),
                Err(_) => return (Err(ErrorKind::Connect), false, None),
            };
        let mut step = None;
        let called =
            tokio::time::timeout_at(deadline, self.target.call_step(&conn, &mut step)).await;
        let result = match called {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => {
                if failure.broken {
                    self.slot.discard(generation).await;
                }
                Err(failure.kind)
            }
            Err(_) => {
                // An HTTP/1.1 connection still owes the abandoned answer; it cannot be reused.
                if !self.target.multiplexed() {
                    self.slot.discard(generation).await;
                }
                Err(ErrorKind::Timeout)
            }
        };
        (result, reconnected, step)
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // A worker never panics while holding its tally, and a tally stays consistent anyway.
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Collector {
    tallies: Vec<Arc<Mutex<Tally>>>,
    total: Tally,
    interval: Tally,
    timeline: Vec<Second>,
    start: Instant,
    load: Load,
    /// `None`: quiet; `Some(true)`: redraw one line on a terminal; `Some(false)`: a line each.
    progress: Option<bool>,
}

impl Collector {
    /// Drains the workers' tallies into the totals and adds a second to the timeline (the
    /// `last` one only if requests ended in it).
    fn collect(&mut self, now: Instant, last: bool) {
        for tally in &self.tallies {
            lock(tally).drain_into(&mut self.interval);
        }
        let quantile = |q: f64| {
            (!self.interval.latency.is_empty()).then(|| self.interval.latency.value_at_quantile(q))
        };
        let second = Second {
            at: now.saturating_duration_since(self.start),
            requests: self.interval.requests(),
            errors: self.interval.error_count(),
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            max_us: (!self.interval.latency.is_empty()).then(|| self.interval.latency.max()),
        };
        self.interval.drain_into(&mut self.total);
        if let Some(terminal) = self.progress.filter(|_| !last) {
            let line = self.progress_line(&second);
            let mut stderr = std::io::stderr().lock();
            // Progress is best effort: a closed stderr must not stop the run.
            let _ = if terminal {
                write!(stderr, "\r{line}\x1b[K")
            } else {
                writeln!(stderr, "{line}")
            };
        }
        if !last || second.requests > 0 {
            self.timeline.push(second);
        }
    }

    fn progress_line(&self, second: &Second) -> String {
        let p99 = second.p99_us.map_or_else(
            || "-".to_owned(),
            |us| format!("{:.2} ms", us as f64 / 1000.0),
        );
        let mode = match self.load.mode {
            Mode::Rate(rate) => format!("rate {rate}/s"),
            Mode::Peak => "peak".to_owned(),
        };
        format!(
            "[{:>5.1}s/{}s] {mode}: {} requests, {} errors; last second {} req/s, p99 {p99}",
            second.at.as_secs_f64(),
            self.load.duration.as_secs_f64(),
            self.total.requests(),
            self.total.error_count(),
            second.requests,
        )
    }

    fn finish_progress(&self) {
        if self.progress == Some(true) {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(mode: Mode) -> Load {
        Load {
            mode,
            duration: Duration::from_secs(1),
            connections: 2,
            streams: 1,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn load_settings_are_checked() {
        assert!(load(Mode::Rate(10.0)).validate(false).is_ok());
        assert!(load(Mode::Peak).validate(false).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(load(Mode::Rate(bad)).validate(true).is_err(), "rate {bad}");
        }
        let streams = Load {
            streams: 4,
            ..load(Mode::Peak)
        };
        assert!(streams.validate(true).is_ok());
        assert!(streams.validate(false).is_err());
        assert_eq!(streams.workers(), 8);
        for bad in [
            Load {
                connections: 0,
                ..load(Mode::Peak)
            },
            Load {
                duration: Duration::ZERO,
                ..load(Mode::Peak)
            },
            Load {
                timeout: Duration::ZERO,
                ..load(Mode::Peak)
            },
        ] {
            assert!(bad.validate(true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_kinds_have_stable_names() {
        assert_eq!(ErrorKind::Connect.name(), "connect");
        assert_eq!(ErrorKind::Timeout.name(), "timeout");
        assert_eq!(ErrorKind::Status(4).name(), "status_4xx");
        assert_eq!(ErrorKind::Status(5).name(), "status_5xx");
        assert_eq!(ErrorKind::Transport.name(), "transport");
        assert_eq!(
            ErrorKind::Grpc(tonic::Code::Unavailable).name(),
            "grpc_unavailable"
        );
        assert_eq!(
            ErrorKind::Grpc(tonic::Code::DeadlineExceeded).name(),
            "grpc_deadline_exceeded"
        );
    }

    #[test]
    fn tallies_merge_and_drain() {
        let ms = Duration::from_millis;
        let now = Instant::now();
        let mut a = Tally::new(0);
        a.record(Ok(()), now, now + ms(1), now + ms(3), None);
        a.record(Err(ErrorKind::Timeout), now, now, now, None);
        a.unsent = 2;
        let mut b = Tally::new(0);
        b.record(Err(ErrorKind::Timeout), now, now, now, None);
        b.record(
            Err(ErrorKind::Status(5)),
            now,
            now + ms(4),
            now + ms(5),
            None,
        );

        let mut total = Tally::new(0);
        a.drain_into(&mut total);
        b.drain_into(&mut total);
        assert_eq!(total.ok, 1);
        assert_eq!(total.requests(), 4);
        assert_eq!(total.errors.get("timeout"), Some(&2));
        assert_eq!(total.errors.get("status_5xx"), Some(&1));
        assert_eq!(total.unsent, 2);
        assert_eq!(total.last_sent, Some(now + ms(4)));
        assert_eq!(total.last_done, Some(now + ms(5)));
        // Latency from the scheduled time, service time from the actual send.
        assert_eq!(total.latency.len(), 1);
        assert!(total.latency.equivalent(total.latency.max(), 3000));
        assert!(total.service.equivalent(total.service.max(), 2000));
        assert_eq!(a.requests(), 0);
        assert!(a.latency.is_empty());
        assert_eq!(a.unsent, 0);
    }

    #[test]
    fn latencies_are_recorded_in_whole_microseconds_at_least_one() {
        assert_eq!(micros(Duration::from_nanos(10)), 1);
        assert_eq!(micros(Duration::from_micros(2500)), 2500);
        let mut tally = Tally::new(0);
        let now = Instant::now();
        tally.record(Ok(()), now, now, now + Duration::from_secs(10 * 3600), None);
        assert!(
            tally
                .latency
                .equivalent(tally.latency.max(), MAX_LATENCY_US)
        );
    }

    #[tokio::test]
    async fn the_dispatcher_keeps_the_timetable() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let end = start + Duration::from_millis(200);
        let queued = Arc::new(AtomicU64::new(0));
        let counted = queued.clone();
        let thread = std::thread::spawn(move || dispatch(start, end, 100.0, tx, &counted));
        let mut tickets = Vec::new();
        while let Some(ticket) = rx.recv().await {
            tickets.push(ticket);
        }
        assert_eq!(thread.join().unwrap(), 0);
        assert_eq!(queued.load(Ordering::Relaxed), 20);
        assert_eq!(tickets.len(), 20);
        for (index, ticket) in tickets.iter().enumerate() {
            assert_eq!(*ticket - start, Duration::from_millis(10 * index as u64));
        }
    }

    #[tokio::test]
    async fn a_full_backlog_turns_due_requests_into_unsent_ones() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let end = start + Duration::from_millis(20);
        let queued = Arc::new(AtomicU64::new(MAX_BACKLOG - 5));
        let counted = queued.clone();
        let thread = std::thread::spawn(move || dispatch(start, end, 1000.0, tx, &counted));
        let mut tickets = 0;
        while rx.recv().await.is_some() {
            tickets += 1;
        }
        assert_eq!(thread.join().unwrap(), 15);
        assert_eq!(tickets, 5);
        assert_eq!(queued.load(Ordering::Relaxed), MAX_BACKLOG);
    }
}
