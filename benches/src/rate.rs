//! Rate shapes (unlimited, fixed, burst profile) and the token-bucket pacer
//! that follows them. Rates are in bytes per second; times in seconds since
//! the start of the run.

/// How fast to go over time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateShape {
    /// As fast as the broker takes it.
    Unlimited,
    /// A constant rate (bytes/s, > 0).
    Fixed(f64),
    /// Each period runs at `base` for `period - peak_secs`, then at `peak`
    /// for `peak_secs` (bytes/s).
    Burst {
        /// Rate outside the peak.
        base: f64,
        /// Rate during the peak.
        peak: f64,
        /// Length of the peak.
        peak_secs: f64,
        /// Length of a whole period (base then peak).
        period_secs: f64,
    },
}

/// Bytes per MB in every rate and throughput figure (decimal, as network
/// and disk rates are usually quoted).
pub const MB: f64 = 1_000_000.0;

impl RateShape {
    /// Parses a `--burst BASE_MBPS:PEAK_MBPS:PEAK_SECS:PERIOD_SECS` value.
    pub fn parse_burst(s: &str) -> Result<RateShape, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [base, peak, peak_secs, period] = parts.as_slice() else {
            return Err(format!(
                "--burst wants BASE_MBPS:PEAK_MBPS:PEAK_SECS:PERIOD_SECS (e.g. 20:200:5:30), not `{s}`"
            ));
        };
        let num = |v: &str, what: &str| -> Result<f64, String> {
            match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(format!(
                    "--burst: {what} must be a non-negative number, not `{v}`"
                )),
            }
        };
        let base = num(base, "BASE_MBPS")?;
        let peak = num(peak, "PEAK_MBPS")?;
        let peak_secs = num(peak_secs, "PEAK_SECS")?;
        let period_secs = num(period, "PERIOD_SECS")?;
        if period_secs <= 0.0 {
            return Err("--burst: PERIOD_SECS must be above 0".into());
        }
        if peak_secs > period_secs {
            return Err(format!(
                "--burst: PEAK_SECS ({peak_secs}) must not exceed PERIOD_SECS ({period_secs})"
            ));
        }
        if peak <= 0.0 || peak_secs <= 0.0 {
            return Err("--burst: the peak needs a rate and a length above 0".into());
        }
        Ok(RateShape::Burst {
            base: base * MB,
            peak: peak * MB,
            peak_secs,
            period_secs,
        })
    }

    /// This shape with every rate multiplied by `f` (a producer's share).
    pub fn scaled(self, f: f64) -> RateShape {
        match self {
            RateShape::Unlimited => RateShape::Unlimited,
            RateShape::Fixed(r) => RateShape::Fixed(r * f),
            RateShape::Burst {
                base,
                peak,
                peak_secs,
                period_secs,
            } => RateShape::Burst {
                base: base * f,
                peak: peak * f,
                peak_secs,
                period_secs,
            },
        }
    }

    /// The rate at time `t` (`f64::INFINITY` when unlimited).
    pub fn rate_at(&self, t: f64) -> f64 {
        match *self {
            RateShape::Unlimited => f64::INFINITY,
            RateShape::Fixed(r) => r,
            RateShape::Burst {
                base,
                peak,
                peak_secs,
                period_secs,
            } => {
                let phase = t.max(0.0) % period_secs;
                if phase >= period_secs - peak_secs {
                    peak
                } else {
                    base
                }
            }
        }
    }

    /// Bytes allowed from time 0 to `t`.
    pub fn cumulative(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        match *self {
            RateShape::Unlimited => f64::INFINITY,
            RateShape::Fixed(r) => r * t,
            RateShape::Burst {
                base,
                peak,
                peak_secs,
                period_secs,
            } => {
                let base_secs = period_secs - peak_secs;
                let per_period = base * base_secs + peak * peak_secs;
                let k = (t / period_secs).floor();
                let phase = t - k * period_secs;
                let within = if phase <= base_secs {
                    base * phase
                } else {
                    base * base_secs + peak * (phase - base_secs)
                };
                k * per_period + within
            }
        }
    }

    /// The earliest time at which `cumulative(t) >= bytes` (0 when
    /// unlimited, infinity when never).
    pub fn time_for(&self, bytes: f64) -> f64 {
        if bytes <= 0.0 {
            return 0.0;
        }
        match *self {
            RateShape::Unlimited => 0.0,
            RateShape::Fixed(r) if r > 0.0 => bytes / r,
            RateShape::Fixed(_) => f64::INFINITY,
            RateShape::Burst {
                base,
                peak,
                peak_secs,
                period_secs,
            } => {
                let base_secs = period_secs - peak_secs;
                let per_period = base * base_secs + peak * peak_secs;
                if per_period <= 0.0 {
                    return f64::INFINITY;
                }
                let mut k = (bytes / per_period).floor();
                let mut r = bytes - k * per_period;
                if r <= 0.0 {
                    // Exactly at a period boundary: the previous period's end.
                    k -= 1.0;
                    r = per_period;
                }
                let in_base = base * base_secs;
                let phase = if r <= in_base && base > 0.0 {
                    r / base
                } else {
                    base_secs + (r - in_base) / peak
                };
                k * period_secs + phase
            }
        }
    }
}

/// A token bucket whose refill follows a [`RateShape`]. Credit saved while
/// idle is capped (at `burst_secs` of the current rate, at least
/// `min_burst_bytes`), so a producer held back by the broker does not
/// later catch up in one rush: the offered load stays the shape.
#[derive(Debug, Clone)]
pub struct Pacer {
    shape: RateShape,
    tokens: f64,
    last: f64,
    burst_secs: f64,
    min_burst_bytes: f64,
}

impl Pacer {
    /// A pacer starting empty at time 0.
    pub fn new(shape: RateShape, burst_secs: f64, min_burst_bytes: f64) -> Pacer {
        Pacer {
            shape,
            tokens: 0.0,
            last: 0.0,
            burst_secs,
            min_burst_bytes,
        }
    }

    /// Whether this pacer never waits.
    pub fn is_unlimited(&self) -> bool {
        self.shape == RateShape::Unlimited
    }

    /// Takes `bytes` at time `now` and returns how long to wait (seconds)
    /// before using them. The debt is kept, so the next call accounts for it.
    pub fn acquire(&mut self, now: f64, bytes: f64) -> f64 {
        if self.is_unlimited() {
            return 0.0;
        }
        if now > self.last {
            self.tokens += self.shape.cumulative(now) - self.shape.cumulative(self.last);
            self.last = now;
        }
        let cap = (self.shape.rate_at(now) * self.burst_secs).max(self.min_burst_bytes);
        self.tokens = self.tokens.min(cap);
        self.tokens -= bytes;
        if self.tokens >= 0.0 {
            return 0.0;
        }
        let at = self.last.max(now);
        let ready = self
            .shape
            .time_for(self.shape.cumulative(at) + -self.tokens);
        (ready - now).max(0.0)
    }
}

/// Parses a rate in MB/s (> 0) into bytes/s.
pub fn parse_mbps(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x * MB),
        _ => Err(format!(
            "a rate must be a number of MB/s above 0, not `{s}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn parse_burst_values_and_errors() {
        let b = RateShape::parse_burst("20:200:5:30").unwrap();
        assert_eq!(
            b,
            RateShape::Burst {
                base: 20.0 * MB,
                peak: 200.0 * MB,
                peak_secs: 5.0,
                period_secs: 30.0
            }
        );
        assert!(RateShape::parse_burst("0:100:1:1").is_ok());
        for bad in [
            "",
            "1:2:3",
            "1:2:3:4:5",
            "a:2:1:4",
            "1:2:5:4",
            "1:0:1:4",
            "1:2:1:0",
            "-1:2:1:4",
        ] {
            assert!(RateShape::parse_burst(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_mbps("12.5").unwrap(), 12.5 * MB);
        assert!(parse_mbps("0").is_err());
        assert!(parse_mbps("x").is_err());
    }

    #[test]
    fn burst_rate_and_integral() {
        let s = RateShape::parse_burst("10:100:2:10").unwrap();
        assert_eq!(s.rate_at(0.0), 10.0 * MB);
        assert_eq!(s.rate_at(7.9), 10.0 * MB);
        assert_eq!(s.rate_at(8.0), 100.0 * MB);
        assert_eq!(s.rate_at(9.99), 100.0 * MB);
        assert_eq!(s.rate_at(10.0), 10.0 * MB);
        // One period: 8 s at 10 + 2 s at 100 = 280 MB.
        assert!(close(s.cumulative(10.0), 280.0 * MB, 1e-9));
        assert!(close(s.cumulative(8.0), 80.0 * MB, 1e-9));
        assert!(close(s.cumulative(9.0), 180.0 * MB, 1e-9));
        assert!(close(s.cumulative(25.0), 560.0 * MB + 50.0 * MB, 1e-9));
        // time_for inverts cumulative.
        for t in [0.5, 3.0, 8.0, 8.5, 9.99, 10.0, 12.0, 19.0, 123.4] {
            let back = s.time_for(s.cumulative(t));
            assert!(close(back, t, 1e-9), "t={t} back={back}");
        }
        let f = RateShape::Fixed(5.0 * MB);
        assert!(close(f.time_for(f.cumulative(3.3)), 3.3, 1e-12));
        assert_eq!(RateShape::Unlimited.time_for(1e12), 0.0);
    }

    #[test]
    fn zero_base_burst_waits_for_the_peak() {
        let s = RateShape::parse_burst("0:100:1:4").unwrap();
        assert_eq!(s.cumulative(3.0), 0.0);
        assert!(close(s.time_for(1.0), 3.0, 1e-6));
        assert!(close(s.time_for(100.0 * MB), 4.0, 1e-9));
        assert!(close(s.time_for(150.0 * MB), 7.5, 1e-9));
    }

    #[test]
    fn scaled_shares_add_up() {
        let s = RateShape::parse_burst("10:100:2:10").unwrap();
        let third = s.scaled(1.0 / 3.0);
        assert!(close(
            third.cumulative(17.0) * 3.0,
            s.cumulative(17.0),
            1e-9
        ));
        assert_eq!(RateShape::Unlimited.scaled(0.5), RateShape::Unlimited);
    }

    /// Simulates a sender that always goes as soon as the pacer lets it and
    /// returns the bytes sent in each whole second.
    fn simulate(shape: RateShape, msg: f64, secs: usize) -> Vec<f64> {
        let mut p = Pacer::new(shape, 0.05, msg);
        let mut per_sec = vec![0.0; secs];
        let mut t = 0.0;
        loop {
            let w = p.acquire(t, msg);
            t += w;
            let s = t.floor() as usize;
            if s >= secs {
                break;
            }
            per_sec[s] += msg;
        }
        per_sec
    }

    #[test]
    fn pacer_follows_a_fixed_rate() {
        let per_sec = simulate(RateShape::Fixed(1.0 * MB), 1000.0, 5);
        for (s, b) in per_sec.iter().enumerate() {
            assert!(close(*b, 1.0 * MB, 0.01), "second {s}: {b}");
        }
    }

    #[test]
    fn pacer_follows_a_burst_profile() {
        let shape = RateShape::parse_burst("1:8:2:5").unwrap();
        let per_sec = simulate(shape, 1000.0, 15);
        for (s, b) in per_sec.iter().enumerate() {
            let want = shape.rate_at(s as f64 + 0.5);
            assert!(close(*b, want, 0.01), "second {s}: {b} want {want}");
        }
    }

    #[test]
    fn pacer_caps_idle_credit() {
        let mut p = Pacer::new(RateShape::Fixed(1.0 * MB), 0.05, 1000.0);
        assert!(p.acquire(0.0, 1000.0) > 0.0);
        // Idle for 10 s: at most 50 ms of credit (50 KB) is kept.
        let mut t = 10.0;
        let mut free = 0.0;
        loop {
            let w = p.acquire(t, 1000.0);
            if w > 0.0 {
                break;
            }
            free += 1000.0;
            t += 1e-9;
        }
        assert!(free <= 0.05 * MB + 1000.0, "{free}");
        assert!(free >= 0.04 * MB, "{free}");
    }

    #[test]
    fn unlimited_never_waits() {
        let mut p = Pacer::new(RateShape::Unlimited, 0.05, 1.0);
        assert!(p.is_unlimited());
        assert_eq!(p.acquire(0.0, 1e12), 0.0);
    }
}
