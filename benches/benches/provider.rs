//! The OpenAI-compatible provider's own overhead per request on loopback, at 64 requests in
//! flight [goal: under 200 µs], side by side with the raw round trip to the same server.
//!
//! Each round sends 64 chat requests at once to a loopback server (the test server, answering
//! at once) three ways, interleaved so that drift hits all alike:
//! - raw: a bare HTTP client POSTs pre-built bodies and reads the replies as text;
//! - provider: `OpenAiProvider::complete` (body building, the concurrency cap, the rate-limit
//!   check, JSON parsing, completion extraction, error scrubbing);
//! - the call pipeline: what a live run uses (the grant, the budget meter and the router in
//!   front of the provider; no response cache);
//! - cache hits: the same with the response cache on and every answer in it (no request sent).
//!
//! The overhead per request is the difference of the median round times divided by 64: with
//! every request in flight at once, that is the extra work the machine does per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drpo_benches::median;
use drpo_host::bindings::types::{Message, Prompt, Request, Role, Sampling};
use drpo_host::calls::Calls;
use drpo_host::calls::budget::Meter;
use drpo_host::calls::cache::{FILE_NAME, Opened, ResponseCache};
use drpo_host::provider::openai::{Endpoint, OpenAiProvider, RetryPolicy};
use drpo_host::provider::{Provider, Router};
use drpo_tests::server::Server;
use serde_json::json;

const IN_FLIGHT: usize = 64;
const ROUNDS: usize = 60;

fn request(i: usize) -> Request {
    Request {
        role: Role::Judge,
        prompt: Prompt::Chat(vec![
            Message {
                role: "system".into(),
                content: "You are a careful judge of answers.".into(),
            },
            Message {
                role: "user".into(),
                content: format!("Rate answer {i}: {}", "lorem ipsum ".repeat(40)),
            },
        ]),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 256,
            n: 1,
            seed: i as u64,
            stop: vec![],
        },
        json_schema: None,
    }
}

fn raw_body(request: &Request) -> String {
    let Prompt::Chat(messages) = &request.prompt else {
        unreachable!("chat requests only")
    };
    json!({
        "model": "bench",
        "temperature": request.sampling.temperature,
        "top_p": request.sampling.top_p,
        "max_tokens": request.sampling.max_tokens,
        "n": 1,
        "seed": request.sampling.seed,
        "messages": messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
    })
    .to_string()
}

fn main() {
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = RetryPolicy {
        concurrency: IN_FLIGHT,
        ..RetryPolicy::default()
    };
    let endpoint = Endpoint {
        base_url: server.url().into(),
        model: "bench".into(),
        api_key: Some("sk-bench".into()),
    };
    let provider = Arc::new(OpenAiProvider::with_policy(endpoint.clone(), policy));
    let router = Router::uniform(Arc::new(OpenAiProvider::with_policy(endpoint, policy)));
    let pipeline = |cache| {
        Calls::new(
            Default::default(),
            Meter::default(),
            cache,
            router.clone(),
            Default::default(),
        )
    };
    let calls = pipeline(None);
    let cache_dir = tempfile::tempdir().unwrap();
    let (Opened::Ready(cache), _) = ResponseCache::open(&cache_dir.path().join(FILE_NAME)) else {
        panic!("a fresh cache opens")
    };
    let cached_calls = pipeline(Some(cache));
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.url());
    let batch: Vec<Request> = (0..IN_FLIGHT).map(request).collect();
    let bodies: Vec<String> = batch.iter().map(raw_body).collect();

    let raw_round = || async {
        let started = Instant::now();
        let replies = futures::future::join_all(bodies.iter().map(|body| {
            let request = client
                .post(&url)
                .bearer_auth("sk-bench")
                .header("content-type", "application/json")
                .body(body.clone());
            async move { request.send().await.unwrap().text().await.unwrap() }
        }))
        .await;
        assert!(replies.iter().all(|r| r.contains("choices")));
        started.elapsed()
    };
    let provider_round = || async {
        let started = Instant::now();
        let answers = provider.complete(batch.clone()).await;
        assert!(answers.iter().all(Result::is_ok));
        started.elapsed()
    };
    let gate_round = || async {
        let started = Instant::now();
        let answered = calls.complete(batch.clone()).await;
        assert!(answered.answers.iter().all(Result::is_ok));
        started.elapsed()
    };

    let hit_round = || async {
        let started = Instant::now();
        let answered = cached_calls.complete(batch.clone()).await;
        assert!(answered.cache_hits.iter().all(|&hit| hit));
        started.elapsed()
    };

    let (mut raw, mut direct, mut gated, mut hits) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        // Warm-up: connections opened, allocations settled.
        for _ in 0..5 {
            raw_round().await;
            provider_round().await;
            gate_round().await;
        }
        // Fills the cache: every later round is all hits.
        let filled = cached_calls.complete(batch.clone()).await;
        assert!(
            filled.answers.iter().all(Result::is_ok) && filled.cache_hits.iter().all(|&hit| !hit)
        );
        for _ in 0..ROUNDS {
            raw.push(raw_round().await);
            direct.push(provider_round().await);
            gated.push(gate_round().await);
            hits.push(hit_round().await);
        }
    });
    let (raw, direct, gated, hits) = (median(raw), median(direct), median(gated), median(hits));
    let per_request = |round: Duration| round.as_secs_f64() * 1e6 / IN_FLIGHT as f64;
    println!(
        "{IN_FLIGHT} requests in flight on loopback, median of {ROUNDS} rounds (per request = round / {IN_FLIGHT}):"
    );
    println!(
        "  raw HTTP round trip        {:>9.0} µs per round  {:>7.1} µs per request",
        raw.as_secs_f64() * 1e6,
        per_request(raw)
    );
    println!(
        "  OpenAiProvider::complete   {:>9.0} µs per round  {:>7.1} µs per request",
        direct.as_secs_f64() * 1e6,
        per_request(direct)
    );
    println!(
        "  call pipeline + provider  {:>9.0} µs per round  {:>7.1} µs per request",
        gated.as_secs_f64() * 1e6,
        per_request(gated)
    );
    println!(
        "  cache hits (no request)    {:>9.0} µs per round  {:>7.1} µs per request",
        hits.as_secs_f64() * 1e6,
        per_request(hits)
    );
    let overhead = per_request(direct) - per_request(raw);
    let overhead_gated = per_request(gated) - per_request(raw);
    println!(
        "provider overhead: {overhead:.1} µs per request; with gate and router: {overhead_gated:.1} µs [goal < 200 µs]"
    );
}
