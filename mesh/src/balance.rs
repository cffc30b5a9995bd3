//! Choosing an endpoint for each call: power of two choices over peak-EWMA latency, outlier
//! ejection with exponential back-off, and a retry budget.
//!
//! Peak EWMA (as in Finagle and Linkerd): each endpoint keeps a moving average of its latency
//! that jumps up at once on a slow answer and decays slowly after, multiplied by the calls in
//! flight. Two endpoints are drawn at random and the cheaper one wins: nearly as good as
//! scanning all of them, without every caller herding onto the same "best" one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde::Serialize;

use crate::endpoint::Instance;

/// How fast the average forgets: the decay's time constant.
const DECAY: Duration = Duration::from_secs(10);
/// An endpoint never measured is assumed this slow, so new endpoints get traffic but not a flood.
const INITIAL_COST: Duration = Duration::from_millis(1);

/// When an endpoint is ejected and for how long.
#[derive(Debug, Clone, Copy)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject an endpoint.
    pub failures: u32,
    /// The first ejection's length; each further one doubles it, up to `max`.
    pub base: Duration,
    pub max: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// What the balancer knows about one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    address: SocketAddr,
    in_flight: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    /// Peak EWMA of latency, in seconds.
    ewma: f64,
    updated: Instant,
    measured: bool,
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// A view of one endpoint for `/endpoints`.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub ewma_ms: f64,
    pub in_flight: u32,
    pub consecutive_failures: u32,
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
}

impl EndpointStats {
    fn new(address: SocketAddr) -> Self {
        Self {
            address,
            in_flight: AtomicU32::new(0),
            health: Mutex::new(Health {
                ewma: INITIAL_COST.as_secs_f64(),
                updated: Instant::now(),
                measured: false,
                consecutive_failures: 0,
                ejections: 0,
                ejected_until: None,
            }),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decayed average now, times the load: lower is better.
    fn cost(&self, now: Instant) -> f64 {
        let health = self.health();
        let ewma = decayed(health.ewma, health.updated, now);
        ewma * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    fn ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|until| until > now)
    }

    /// Marks a call started; the guard ends it.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records a successful call's latency.
    pub fn succeeded(&self, latency: Duration) {
        let now = Instant::now();
        let mut health = self.health();
        let sample = latency.as_secs_f64();
        let current = decayed(health.ewma, health.updated, now);
        // Peak-sensitive: a slower answer is believed at once, a faster one only gradually.
        health.ewma = if !health.measured || sample > current {
            sample
        } else {
            let weight = (-(now - health.updated).as_secs_f64() / DECAY.as_secs_f64()).exp();
            current * weight + sample * (1.0 - weight)
        };
        health.measured = true;
        health.updated = now;
        health.consecutive_failures = 0;
        health.ejections = 0;
    }

    /// Records a failed call; returns the ejection's length if this failure ejected the endpoint.
    pub fn failed(&self, policy: &EjectionPolicy) -> Option<Duration> {
        let now = Instant::now();
        let mut health = self.health();
        health.consecutive_failures += 1;
        if health.consecutive_failures < policy.failures
            || health.ejected_until.is_some_and(|until| until > now)
        {
            return None;
        }
        let factor = 2u32.saturating_pow(health.ejections.min(16));
        let length = (policy.base * factor).min(policy.max);
        health.ejections += 1;
        health.ejected_until = Some(now + length);
        // After the ejection one success readmits it; one failure ejects it again, for longer.
        health.consecutive_failures = policy.failures - 1;
        Some(length)
    }

    pub fn view(&self) -> EndpointView {
        let now = Instant::now();
        let health = self.health();
        EndpointView {
            ewma_ms: decayed(health.ewma, health.updated, now) * 1000.0,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consecutive_failures: health.consecutive_failures,
            ejected_for_ms: health
                .ejected_until
                .and_then(|until| until.checked_duration_since(now))
                .map(|left| u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
            ejections: health.ejections,
        }
    }
}

/// Without new samples the average decays toward zero, so an endpoint that has not been chosen
/// for a while (slow once, or merely unlucky) looks cheap again and is tried: the balancer keeps
/// measuring every endpoint instead of settling on one.
fn decayed(ewma: f64, updated: Instant, now: Instant) -> f64 {
    ewma * (-(now - updated).as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// A call in flight on an endpoint; dropping it ends the call.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stats of every endpoint seen, kept across table updates so an endpoint that is
/// re-registered keeps its history (and its ejection).
#[derive(Debug, Default)]
pub struct Balancer {
    stats: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl Balancer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self, address: SocketAddr) -> Arc<EndpointStats> {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(address)
            .or_insert_with(|| Arc::new(EndpointStats::new(address)))
            .clone()
    }

    /// Picks one of `instances`, skipping `tried` addresses and ejected endpoints. When every
    /// candidate is ejected they are all used anyway: a guess beats refusing every call.
    pub fn pick(&self, instances: &[Instance], tried: &[SocketAddr]) -> Option<Arc<EndpointStats>> {
        let now = Instant::now();
        let fresh: Vec<(Arc<EndpointStats>, f64)> = instances
            .iter()
            .filter(|instance| !tried.contains(&instance.endpoint.address))
            .map(|instance| {
                let weight = f64::from(instance.endpoint.weight.max(1));
                (self.stats(instance.endpoint.address), weight)
            })
            .collect();
        let healthy: Vec<&(Arc<EndpointStats>, f64)> = fresh
            .iter()
            .filter(|(stats, _)| !stats.ejected(now))
            .collect();
        let pool: Vec<&(Arc<EndpointStats>, f64)> = if healthy.is_empty() {
            fresh.iter().collect()
        } else {
            healthy
        };
        // A heavier endpoint looks proportionally cheaper.
        let cost = |(stats, weight): &(Arc<EndpointStats>, f64)| stats.cost(now) / weight;
        match pool.len() {
            0 => None,
            1 => Some(pool[0].0.clone()),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (pool[a], pool[b]);
                Some(if cost(a) <= cost(b) { a } else { b }.0.clone())
            }
        }
    }
}

/// Retries allowed as a share of calls: each call deposits `ratio` of a retry, each retry
/// withdraws one, plus a small floor per second so a quiet service can still retry. Keeps a
/// struggling service from being hit by a multiple of its load.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub fn new(ratio: f64, per_second: f64) -> Self {
        Self {
            ratio,
            per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        let elapsed = (now - state.1).as_secs_f64();
        let cap = (self.per_second * 10.0).max(100.0);
        state.0 = (state.0 + elapsed * self.per_second).min(cap);
        state.1 = now;
    }

    pub fn deposit(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut state);
        state.0 += self.ratio;
    }

    pub fn try_withdraw(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut state);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    fn instance(port: u16) -> Instance {
        Instance {
            id: format!("n{port}"),
            endpoint: Endpoint {
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                node: format!("n{port}"),
                zone: String::new(),
                weight: 1,
                version: String::new(),
                started_at: 0,
            },
        }
    }

    #[test]
    fn the_faster_endpoint_gets_most_calls() {
        let balancer = Balancer::new();
        let instances = [instance(1), instance(2), instance(3)];
        balancer
            .stats(instances[0].endpoint.address)
            .succeeded(Duration::from_millis(50));
        balancer
            .stats(instances[1].endpoint.address)
            .succeeded(Duration::from_millis(1));
        balancer
            .stats(instances[2].endpoint.address)
            .succeeded(Duration::from_millis(50));
        let fast = (0..3000)
            .filter(|_| balancer.pick(&instances, &[]).unwrap().address().port() == 2)
            .count();
        // With two random draws out of three, the fast one is in the pair 2/3 of the time.
        assert!((1800..2200).contains(&fast), "{fast}");
    }

    #[test]
    fn a_heavier_endpoint_takes_more_calls() {
        let balancer = Balancer::new();
        let mut heavy = instance(1);
        heavy.endpoint.weight = 4;
        let instances = [heavy, instance(2)];
        for instance in &instances {
            balancer
                .stats(instance.endpoint.address)
                .succeeded(Duration::from_millis(2));
        }
        let to_heavy = (0..1000)
            .filter(|_| balancer.pick(&instances, &[]).unwrap().address().port() == 1)
            .count();
        assert_eq!(to_heavy, 1000);
    }

    #[test]
    fn an_endpoint_left_alone_is_tried_again() {
        let balancer = Balancer::new();
        let instances = [instance(1), instance(2)];
        for instance in &instances {
            balancer
                .stats(instance.endpoint.address)
                .succeeded(Duration::from_millis(2));
        }
        // Port 2 was last measured five seconds ago: its estimate has decayed below port 1's.
        let idle = balancer.stats(instances[1].endpoint.address);
        idle.health().updated -= Duration::from_secs(5);
        assert_eq!(balancer.pick(&instances, &[]).unwrap().address().port(), 2);
    }

    #[test]
    fn load_in_flight_counts_against_an_endpoint() {
        let balancer = Balancer::new();
        let instances = [instance(1), instance(2)];
        let busy = balancer.stats(instances[0].endpoint.address);
        let _calls: Vec<InFlight> = (0..10).map(|_| busy.start()).collect();
        for _ in 0..100 {
            assert_eq!(balancer.pick(&instances, &[]).unwrap().address().port(), 2);
        }
    }

    #[test]
    fn failures_eject_with_growing_back_off_and_a_success_readmits() {
        let policy = EjectionPolicy::default();
        let stats = EndpointStats::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(stats.failed(&policy), None);
        assert_eq!(stats.failed(&policy), None);
        assert_eq!(stats.failed(&policy), Some(Duration::from_secs(1)));
        assert!(stats.ejected(Instant::now()));
        // Still ejected: further failures do not stack.
        assert_eq!(stats.failed(&policy), None);
        stats.health().ejected_until = Some(Instant::now());
        assert_eq!(stats.failed(&policy), Some(Duration::from_secs(2)));
        stats.health().ejected_until = Some(Instant::now());
        stats.succeeded(Duration::from_millis(1));
        assert_eq!(stats.failed(&policy), None);
    }

    #[test]
    fn ejected_and_tried_endpoints_are_skipped_unless_nothing_else_is_left() {
        let balancer = Balancer::new();
        let instances = [instance(1), instance(2)];
        let policy = EjectionPolicy::default();
        let first = balancer.stats(instances[0].endpoint.address);
        for _ in 0..3 {
            first.failed(&policy);
        }
        for _ in 0..50 {
            assert_eq!(balancer.pick(&instances, &[]).unwrap().address().port(), 2);
        }
        let second = instances[1].endpoint.address;
        assert_eq!(
            balancer
                .pick(&instances, &[second])
                .unwrap()
                .address()
                .port(),
            1
        );
        let all = [instances[0].endpoint.address, second];
        assert!(balancer.pick(&instances, &all).is_none());
    }

    #[test]
    fn the_retry_budget_allows_a_share_of_calls() {
        let budget = RetryBudget::new(0.25, 0.0);
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(allowed, 25);
    }
}
