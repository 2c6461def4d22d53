//! Requests-per-minute and tokens-per-minute limits of one endpoint, over a sliding window.
//!
//! A request may start when fewer than `requests` requests started, and fewer than `tokens`
//! tokens were reported spent, within the last `window`; otherwise it waits until the oldest
//! counted event leaves the window. Tokens are known only from a reply's `usage`, so the token
//! limit holds back the requests after the ones that filled the window. Every try counts,
//! retries included: that is what the server counts.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The limits of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per window at most.
    pub requests: Option<u32>,
    /// Tokens (prompt plus completion) per window at most.
    pub tokens: Option<u64>,
    /// The window (a minute, except in tests).
    pub window: Duration,
}

impl RateLimit {
    /// Limits per minute.
    pub fn per_minute(requests: Option<u32>, tokens: Option<u64>) -> RateLimit {
        RateLimit {
            requests,
            tokens,
            window: Duration::from_secs(60),
        }
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }
}

/// Enforces a [`RateLimit`].
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    events: Mutex<Events>,
}

#[derive(Debug, Default)]
struct Events {
    starts: VecDeque<Instant>,
    spent: VecDeque<(Instant, u64)>,
    spent_in_window: u64,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            events: Mutex::default(),
        }
    }

    /// Waits until a request may start, and counts it.
    pub async fn start(&self) {
        if !self.limit.is_limited() {
            return;
        }
        loop {
            let wait = {
                let mut events = self.events.lock().await;
                let now = Instant::now();
                let horizon = now.checked_sub(self.limit.window);
                let expired = |at: Instant| horizon.is_some_and(|h| at <= h);
                while events.starts.front().is_some_and(|&at| expired(at)) {
                    events.starts.pop_front();
                }
                while let Some(&(at, tokens)) = events.spent.front() {
                    if !expired(at) {
                        break;
                    }
                    events.spent.pop_front();
                    events.spent_in_window -= tokens;
                }
                let requests_full = self
                    .limit
                    .requests
                    .is_some_and(|max| events.starts.len() >= max.max(1) as usize);
                let tokens_full = self
                    .limit
                    .tokens
                    .is_some_and(|max| events.spent_in_window >= max);
                if !requests_full && !tokens_full {
                    events.starts.push_back(now);
                    return;
                }
                let mut until = now + self.limit.window;
                if requests_full && let Some(&oldest) = events.starts.front() {
                    until = until.min(oldest + self.limit.window);
                }
                if tokens_full && let Some(&(oldest, _)) = events.spent.front() {
                    until = if requests_full {
                        until.max(oldest + self.limit.window)
                    } else {
                        oldest + self.limit.window
                    };
                }
                until.saturating_duration_since(now)
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Counts the tokens a reply reported.
    pub async fn spent(&self, tokens: u64) {
        if self.limit.tokens.is_none() || tokens == 0 {
            return;
        }
        let mut events = self.events.lock().await;
        events.spent.push_back((Instant::now(), tokens));
        events.spent_in_window += tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `future` on tokio's paused clock, which advances only when every task waits: the
    /// waits below are exact, whatever the machine's load.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn requests_beyond_the_limit_wait_for_the_window() {
        block_on(async {
            let limiter = RateLimiter::new(RateLimit {
                requests: Some(3),
                tokens: None,
                window: Duration::from_millis(300),
            });
            let started = Instant::now();
            for _ in 0..3 {
                limiter.start().await;
            }
            assert_eq!(started.elapsed(), Duration::ZERO, "the first three at once");
            limiter.start().await;
            assert_eq!(started.elapsed(), Duration::from_millis(300));
        });
    }

    #[test]
    fn spent_tokens_hold_back_the_next_request() {
        block_on(async {
            let limiter = RateLimiter::new(RateLimit {
                requests: None,
                tokens: Some(100),
                window: Duration::from_millis(300),
            });
            let started = Instant::now();
            limiter.start().await;
            limiter.spent(150).await;
            limiter.start().await;
            assert_eq!(started.elapsed(), Duration::from_millis(300));
        });
    }
}
