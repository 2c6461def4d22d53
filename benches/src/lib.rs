//! Benchmarks live in benches/; this holds what several of them share.

use std::time::Duration;

/// The median of the timed rounds (the upper one of an even count): the machines are shared and
/// noisy, and the median ignores the rounds a neighbour slowed down.
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}
