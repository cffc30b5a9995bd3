//! Rate limits per client address and per user, for each route class: the generic cell rate
//! algorithm (one atomic "theoretical arrival time" per key, no lock), keys kept in a bounded
//! cache so memory stays flat however many clients appear.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Validate};

/// How many requests a key may make: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// The limits of one route class.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassLimits {
    pub per_ip: Rate,
    pub per_user: Rate,
}

/// Limits per route class (`shopmesh.options.v1.RateClass`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub default: ClassLimits,
    /// Register, login, refresh: what password guessing and sign-up abuse hammer.
    pub credentials: ClassLimits,
    pub checkout: ClassLimits,
    /// Signed payment-provider callbacks, from a handful of addresses.
    pub webhook: ClassLimits,
    /// How many clients and users are tracked at once; beyond it the cache evicts the keys it
    /// deems least useful (moka's TinyLFU), whose allowance then starts afresh.
    pub max_tracked: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let rate = |per_second, burst| Rate { per_second, burst };
        Self {
            default: ClassLimits {
                per_ip: rate(100.0, 200),
                per_user: rate(50.0, 100),
            },
            credentials: ClassLimits {
                per_ip: rate(1.0, 20),
                per_user: rate(1.0, 10),
            },
            checkout: ClassLimits {
                per_ip: rate(5.0, 20),
                per_user: rate(2.0, 10),
            },
            webhook: ClassLimits {
                per_ip: rate(200.0, 400),
                per_user: rate(200.0, 400),
            },
            max_tracked: 100_000,
        }
    }
}

impl Validate for LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, class) in [
            ("default", &self.default),
            ("credentials", &self.credentials),
            ("checkout", &self.checkout),
            ("webhook", &self.webhook),
        ] {
            for (key, rate) in [("per_ip", class.per_ip), ("per_user", class.per_user)] {
                if !(rate.per_second > 0.0 && rate.per_second.is_finite()) || rate.burst == 0 {
                    return Err(ConfigError::invalid(
                        format!("limits.{name}.{key}"),
                        "per_second and burst must be positive",
                    ));
                }
            }
        }
        if self.max_tracked == 0 {
            return Err(ConfigError::invalid(
                "limits.max_tracked",
                "must be positive",
            ));
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn class(&self, class: i32) -> &ClassLimits {
        match class {
            1 => &self.credentials,
            2 => &self.checkout,
            3 => &self.webhook,
            _ => &self.default,
        }
    }
}

/// Who a limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    User(String),
}

/// The limiter of the whole edge.
pub struct Limiter {
    config: LimitsConfig,
    /// Per (class, key): the theoretical arrival time, in nanoseconds since `epoch`.
    cells: moka::sync::Cache<(i32, Key), Arc<AtomicU64>>,
    epoch: Instant,
}

impl Limiter {
    pub fn new(config: LimitsConfig) -> Self {
        // A key is forgotten only once idle long enough to have refilled its whole burst.
        let refill = [
            &config.default,
            &config.credentials,
            &config.checkout,
            &config.webhook,
        ]
        .iter()
        .flat_map(|class| [class.per_ip, class.per_user])
        .map(|rate| f64::from(rate.burst) / rate.per_second)
        .fold(1.0, f64::max);
        Self {
            cells: moka::sync::Cache::builder()
                .max_capacity(config.max_tracked)
                .time_to_idle(Duration::from_secs_f64(refill + 1.0))
                .build(),
            config,
            epoch: Instant::now(),
        }
    }

    /// Counts one request of `key` in `class`; `Err` says how long to wait.
    pub fn check(&self, class: i32, key: Key) -> Result<(), Duration> {
        let limits = self.config.class(class);
        let rate = match key {
            Key::Ip(_) => limits.per_ip,
            Key::User(_) => limits.per_user,
        };
        let interval = (1e9 / rate.per_second) as u64;
        let tolerance = interval.saturating_mul(u64::from(rate.burst - 1));
        let cell = self
            .cells
            .get_with((class, key), || Arc::new(AtomicU64::new(0)));
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                return Err(Duration::from_nanos(start - now - tolerance));
            }
            match cell.compare_exchange_weak(
                tat,
                start + interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_rate() {
        let limiter = Limiter::new(LimitsConfig::default());
        let ip = || Key::Ip("192.0.2.1".parse().unwrap());
        // Credentials: a burst of 20 per address, then one a second.
        for _ in 0..20 {
            limiter.check(1, ip()).unwrap();
        }
        let wait = limiter.check(1, ip()).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Other addresses, users and classes have their own allowance.
        limiter
            .check(1, Key::Ip("192.0.2.2".parse().unwrap()))
            .unwrap();
        limiter.check(1, Key::User("u-1".into())).unwrap();
        limiter.check(0, ip()).unwrap();
    }

    #[test]
    fn memory_stays_bounded_by_max_tracked() {
        let limiter = Limiter::new(LimitsConfig {
            max_tracked: 100,
            ..LimitsConfig::default()
        });
        for n in 0..10_000u32 {
            let _ = limiter.check(0, Key::Ip(IpAddr::from(n.to_be_bytes())));
        }
        limiter.cells.run_pending_tasks();
        assert!(
            limiter.cells.entry_count() <= 100,
            "{}",
            limiter.cells.entry_count()
        );
    }
}
