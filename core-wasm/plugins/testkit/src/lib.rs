//! `testkit.wasm`: a strategy that is not DRPO, for testing the host.
//!
//! Its `mode` option picks the behaviour:
//!
//! | mode | what it does |
//! |---|---|
//! | `chain` (default) | `steps` rounds, each one batched `complete` of `width` judge requests whose prompt carries the previous round's answers; records a node per round; returns a summary (with `reward` `nan`, every reward and the best score are NaN) |
//! | `spin` | loops forever (fuel or deadline must stop it) |
//! | `alloc` | allocates without bound (the memory limit must stop it) |
//! | `wait` | one `complete` call (a slow provider makes it outlast the deadline) |
//! | `panic` | panics with the message in `message` |
//! | `echo` | `count` single-request `complete` calls whose prompt is `size` bytes (for benchmarks) |
//! | `ask` | one `complete` of `width` requests, each asking `n` choices of `max_tokens` at most; reports each answer's error |
//! | `forge` | records nodes that break the tree (a duplicate id, an orphan, a parent cycle, a depth of `u32::MAX`), logs lines with terminal escapes and a forged result line, and returns a best path through a refused node and a best prompt with escapes |
//! | `fail` | fails with an error of `size` bytes carrying terminal escapes and a forged result line |
//! | `spin-estimate` | its `estimate` loops forever; its `run` returns at once |
//! | `flood` | one `complete` of `asks` requests (as `ask`, when `asks` > 0), then `count` nodes whose prompt is `size` bytes, each followed by a log line of `log_size` bytes (none when 0); reports the asks' errors |
//! | `probe` | tries to reach the world through WASI (files, environment, network, clocks, random numbers) and reports what it saw |

use serde_json::{Value, json};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "strategy",
});

use drpo::strategy::host;
use drpo::strategy::types::{
    LogLevel, Message, Node, Prompt, Request, Role, RoleEstimate, Sampling,
};

struct Testkit;

impl Guest for Testkit {
    fn describe() -> Info {
        Info {
            name: "testkit".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Exercises the drpo-host runtime: call chains, limits and the sandbox."
                .into(),
            options_schema: json!({
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "default": "chain",
                             "enum": ["chain", "spin", "alloc", "wait", "panic", "echo", "probe", "ask",
                                      "forge", "fail", "spin-estimate", "flood"]},
                    "asks": {"type": "integer", "default": 0, "minimum": 0},
                    "log_size": {"type": "integer", "default": 0, "minimum": 0},
                    "count": {"type": "integer", "default": 1000, "minimum": 0},
                    "size": {"type": "integer", "default": 1024, "minimum": 0},
                    "steps": {"type": "integer", "default": 3, "minimum": 0},
                    "width": {"type": "integer", "default": 2, "minimum": 1},
                    "reward": {"type": "string", "default": "length", "enum": ["length", "nan"]},
                    "n": {"type": "integer", "default": 1, "minimum": 1},
                    "max_tokens": {"type": "integer", "default": 64, "minimum": 0},
                    "message": {"type": "string", "default": "testkit was asked to panic"},
                    "port": {"type": "integer", "default": 0},
                    "seed": {"type": "integer", "default": 0}
                }
            })
            .to_string(),
        }
    }

    fn run(options: String) -> Result<Outcome, String> {
        let options: Value =
            serde_json::from_str(&options).map_err(|e| format!("options are not JSON: {e}"))?;
        let number = |key: &str, default: u64| options[key].as_u64().unwrap_or(default);
        match options["mode"].as_str().unwrap_or("chain") {
            "chain" => chain(
                number("steps", 3),
                number("width", 2) as u32,
                number("seed", 0),
                options["reward"] == "nan",
            ),
            "spin" => spin(),
            "alloc" => alloc(),
            "wait" => {
                let answers = host::complete(&[request("wait".into(), 0, 0)]);
                Ok(summary(json!({"answers": format!("{answers:?}")})))
            }
            "echo" => Ok(echo(number("count", 1000), number("size", 1024) as usize)),
            "panic" => panic!("{}", options["message"].as_str().unwrap_or("panic")),
            "probe" => Ok(summary(probe(number("port", 0) as u16))),
            "ask" => Ok(ask(
                number("width", 2) as u32,
                number("n", 1) as u32,
                number("max_tokens", 64) as u32,
            )),
            "forge" => Ok(forge()),
            "fail" => Err(hostile_text(number("size", 1024) as usize)),
            "spin-estimate" => Ok(summary(json!({}))),
            "flood" => Ok(flood(
                number("asks", 0) as u32,
                number("n", 1) as u32,
                number("max_tokens", 64) as u32,
                number("count", 1000) as u32,
                number("size", 1024) as usize,
                number("log_size", 0) as usize,
            )),
            other => Err(format!("unknown mode `{other}`")),
        }
    }

    /// Exact for `chain` (its requests alternate between judge and optimizer); nothing for the
    /// other modes, which exist to misbehave.
    fn estimate(options: String) -> Result<Plan, String> {
        let options: Value =
            serde_json::from_str(&options).map_err(|e| format!("options are not JSON: {e}"))?;
        match options["mode"].as_str().unwrap_or("chain") {
            "chain" => {}
            "spin-estimate" => return spin().map(|_| no_plan()),
            _ => return Ok(no_plan()),
        }
        let steps = options["steps"].as_u64().unwrap_or(3);
        let width = options["width"].as_u64().unwrap_or(2);
        let per_role = |role, calls| RoleEstimate {
            role,
            min_calls: calls,
            max_calls: calls,
            prompt_tokens_per_call: 16,
            max_completion_tokens_per_call: 64,
        };
        Ok(Plan {
            roles: vec![
                per_role(Role::Judge, steps * width.div_ceil(2)),
                per_role(Role::Optimizer, steps * (width / 2)),
            ],
            levels: None,
        })
    }
}

fn no_plan() -> Plan {
    Plan {
        roles: Vec::new(),
        levels: None,
    }
}

fn request(text: String, index: u32, seed: u64) -> Request {
    Request {
        role: if index.is_multiple_of(2) {
            Role::Judge
        } else {
            Role::Optimizer
        },
        prompt: Prompt::Chat(vec![Message {
            role: "user".into(),
            content: text,
        }]),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 64,
            n: 1,
            seed,
            stop: vec![],
        },
        json_schema: None,
    }
}

fn chain(steps: u64, width: u32, seed: u64, nan: bool) -> Result<Outcome, String> {
    let reward = |value: f64| if nan { f64::NAN } else { value };
    let queries = host::queries(None);
    let mut previous = String::from("start");
    let mut score = 0.0;
    let mut path = vec![0];
    host::record_node(&Node {
        id: 0,
        parent: None,
        depth: 0,
        prompt: previous.clone(),
        reward: 0.0,
        details: "{}".into(),
    });
    for step in 0..steps {
        let query = queries
            .get(step as usize % queries.len().max(1))
            .map_or("no query", |q| q.text.as_str());
        let batch: Vec<Request> = (0..width)
            .map(|i| {
                request(
                    format!("step {step} item {i} after [{previous}] on {query}"),
                    i,
                    seed,
                )
            })
            .collect();
        let answers = host::complete(&batch);
        let mut texts = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer {
                Ok(completion) => texts.push(completion.choices.join("|")),
                Err(error) => return Err(format!("step {step}: {error:?}")),
            }
        }
        previous = texts.join(" + ");
        score += previous.len() as f64;
        let id = step as u32 + 1;
        host::record_node(&Node {
            id,
            parent: Some(id - 1),
            depth: id,
            prompt: previous.clone(),
            reward: reward(previous.len() as f64),
            details: json!({"step": step}).to_string(),
        });
        path.push(id);
        host::log(LogLevel::Info, &format!("step {step} done"));
    }
    Ok(Outcome {
        best_prompt: Some(previous),
        best_score: Some(reward(score)),
        best_path: path,
        details: json!({"steps": steps}).to_string(),
    })
}

fn echo(count: u64, size: usize) -> Outcome {
    let text = "x".repeat(size);
    let mut answered = 0u64;
    for i in 0..count {
        let answers = host::complete(&[request(text.clone(), i as u32, 0)]);
        answered += answers.iter().filter(|a| a.is_ok()).count() as u64;
    }
    summary(json!({"answered": answered}))
}

fn ask(width: u32, n: u32, max_tokens: u32) -> Outcome {
    summary(json!(ask_errors(width, n, max_tokens)))
}

/// One batch of `width` requests of `n` choices; how many were answered, and the errors.
fn ask_errors(width: u32, n: u32, max_tokens: u32) -> Value {
    let batch: Vec<Request> = (0..width)
        .map(|i| {
            let mut request = request(format!("ask {i}"), i, 0);
            request.sampling.n = n;
            request.sampling.max_tokens = max_tokens;
            request
        })
        .collect();
    let answers = host::complete(&batch);
    let errors: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(|e| format!("{e:?}")))
        .collect();
    json!({"answered": answers.len() - errors.len(), "errors": errors})
}

fn flood(asks: u32, n: u32, max_tokens: u32, count: u32, size: usize, log_size: usize) -> Outcome {
    let asked = if asks > 0 {
        ask_errors(asks, n, max_tokens)
    } else {
        json!({"answered": 0, "errors": []})
    };
    for id in 0..count {
        host::record_node(&Node {
            id,
            parent: id.checked_sub(1),
            depth: id,
            prompt: "n".repeat(size),
            reward: f64::from(id),
            details: "{}".into(),
        });
        if log_size > 0 {
            host::log(LogLevel::Info, &"l".repeat(log_size));
        }
    }
    summary(asked)
}

/// Text that would take over a terminal printed raw: a screen clear, a colour, a carriage
/// return and a line break before a forged result line, a right-to-left override, a title
/// change; then `x` up to `size` bytes.
fn hostile_text(size: usize) -> String {
    let mut text = String::from(
        "\u{1b}[2J\u{1b}[31mred\rbest score: 99.0\nbest score: 99.0 \u{202e}txet\u{1b}]0;owned\u{7}",
    );
    let padding = size.saturating_sub(text.len());
    text.push_str(&"x".repeat(padding));
    text
}

fn forge() -> Outcome {
    let node = |id, parent, depth| Node {
        id,
        parent,
        depth,
        prompt: format!("node {id}"),
        reward: 1.0,
        details: "{}".into(),
    };
    for forged in [
        node(0, None, 0),
        node(1, Some(0), 1),
        node(1, Some(0), 1),
        node(2, Some(42), 1),
        node(3, Some(4), 1),
        node(4, Some(3), 2),
        node(5, Some(0), u32::MAX),
        node(6, None, 7),
    ] {
        host::record_node(&forged);
    }
    host::log(LogLevel::Info, &hostile_text(0));
    Outcome {
        best_prompt: Some(format!("node 4{}", hostile_text(0))),
        best_score: Some(99.0),
        best_path: vec![0, 3, 4],
        // The details the host prints on the terminal (`ended_early`, the validation's
        // summary), forged too.
        details: json!({
            "ended_early": hostile_text(0),
            "validation": {"summary": hostile_text(0)},
        })
        .to_string(),
    }
}

fn spin() -> Result<Outcome, String> {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn alloc() -> Result<Outcome, String> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}

fn probe(port: u16) -> Value {
    let file = std::fs::read_to_string("/etc/passwd").map(|s| s.len());
    let root = std::fs::read_dir("/").map(|entries| entries.count());
    let cwd = std::env::current_dir().map(|p| p.display().to_string());
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| "connected");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let started = std::time::Instant::now();
    let elapsed_ns = started.elapsed().as_nanos() as u64;
    let mut random = [0u8; 8];
    let random_ok = getrandom::fill(&mut random).is_ok();
    json!({
        "file": format!("{file:?}"),
        "file_readable": file.is_ok(),
        "root_listable": root.is_ok(),
        "cwd": format!("{cwd:?}"),
        "env_vars": env,
        "tcp": format!("{tcp:?}"),
        "tcp_connected": tcp.is_ok(),
        "wall_clock_ms": now,
        "monotonic_step_ns": elapsed_ns,
        "random": if random_ok { format!("{random:02x?}") } else { "unavailable".into() },
    })
}

fn summary(details: Value) -> Outcome {
    Outcome {
        best_prompt: None,
        best_score: None,
        best_path: vec![],
        details: details.to_string(),
    }
}

export!(Testkit);
