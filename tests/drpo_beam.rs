//! `beam.wasm` end to end through `drpo-host run`, against an OpenAI-compatible server on
//! loopback whose answers follow each request's JSON schema.

use std::path::Path;
use std::time::Duration;

use drpo_host::bindings::types::Role;
use drpo_host::runlog::{CallRequest, CallResponse, EndStatus, Entry, read_log};
use drpo_tests::server::{Reply, Server, completion, default_reply, digest};
use drpo_tests::{assert_best_path, assert_replays, beam_best_path, host, result_json, text};
use serde_json::Value;

#[derive(Debug, Default, PartialEq)]
struct Counts {
    optimizer_requests: usize,
    optimizer_candidates: usize,
    base: usize,
    judge: usize,
    metrics: usize,
}

fn counts(dir: &Path) -> Counts {
    let mut counts = Counts::default();
    for entry in read_log(&dir.join("run.log")).unwrap().entries {
        let Entry::Call(call) = entry else { continue };
        let (CallRequest::Complete(batch), CallResponse::Complete(results)) =
            (&call.request, &call.response)
        else {
            continue;
        };
        for (request, result) in batch.iter().zip(results) {
            match request.role {
                Role::Optimizer => {
                    counts.optimizer_requests += 1;
                    counts.optimizer_candidates += result.as_ref().map_or(0, |c| c.choices.len());
                }
                Role::Base => counts.base += 1,
                Role::Judge => counts.judge += 1,
                Role::Metrics => counts.metrics += 1,
            }
        }
    }
    counts
}

/// Whether `request` asks for a judgement: its schema has one `{rationale, score}` object per
/// aspect.
fn is_judgement(request: &Value) -> bool {
    request["response_format"]["json_schema"]["schema"]["properties"]
        .as_object()
        .is_some_and(|aspects| {
            !aspects.is_empty()
                && aspects
                    .values()
                    .all(|aspect| aspect["properties"]["score"].is_object())
        })
}

/// A server like the default one whose judge gives only the scores in `scores` to the
/// judgements that `applies` picks (the default reply to the request with its score scale
/// narrowed, so the answer still follows the request's schema).
fn judge_scoring(
    scores: &'static [u64],
    applies: impl Fn(&Value) -> bool + Send + Sync + 'static,
) -> Server {
    Server::with_script(move |path, request| {
        let mut narrowed = request.clone();
        if is_judgement(request) && applies(request) {
            let aspects = narrowed["response_format"]["json_schema"]["schema"]["properties"]
                .as_object_mut()
                .unwrap();
            for aspect in aspects.values_mut() {
                aspect["properties"]["score"]["enum"] = Value::from(scores);
            }
        }
        Reply {
            status: 200,
            body: default_reply(path, &narrowed).to_string(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    })
}

fn beam_run(server: &Server, work: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    drpo_tests::beam_run(work, server.url(), name, extra)
}

#[test]
fn published_call_counts_at_depth_20_beam_2_three_actions_and_a_warm_metrics_cache() {
    // The published counts are those of a search that never keeps a prompt: a judge that never
    // gives a 5 never triggers the skip rule.
    let server = judge_scoring(&[1, 2, 3, 4], |_| true);
    let work = tempfile::tempdir().unwrap();
    let cache_file = work.path().join("metrics_cache.json");
    let cache_flag = cache_file.display().to_string();
    let flags = [
        "--depth",
        "20",
        "--beam-size",
        "2",
        "--n-actions",
        "3",
        "--metrics-cache-path",
        &cache_flag,
    ];
    let cold = beam_run(&server, work.path(), "cold", &flags);
    assert!(cold.status.success(), "{}", text(&cold));
    assert_eq!(
        counts(&work.path().join("cold")),
        Counts {
            optimizer_requests: 37,
            optimizer_candidates: 111,
            base: 112,
            judge: 112,
            metrics: 20,
        }
    );

    let warm = beam_run(&server, work.path(), "warm", &flags);
    assert!(warm.status.success(), "{}", text(&warm));
    let warm_counts = counts(&work.path().join("warm"));
    assert_eq!(
        warm_counts.metrics, 0,
        "every query's aspects come from the cache"
    );
    assert_eq!(warm_counts.base, 112);

    assert_replays(&work.path().join("cache"), &work.path().join("cold"));
}

#[test]
fn the_outcome_holds_the_best_prompt_its_reward_the_path_and_the_whole_tree() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(
        &server,
        work.path(),
        "run",
        &["--depth", "3", "--beam-size", "2", "--n-actions", "2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dir = work.path().join("run");
    let result = result_json(&dir);
    let tree = result["tree"].as_array().unwrap();
    let deepest = tree.iter().filter_map(|n| n["depth"].as_u64()).max();
    let rewards: Vec<f64> = tree
        .iter()
        .filter(|n| n["depth"].as_u64() == deepest)
        .map(|n| n["reward"].as_f64().unwrap())
        .collect();
    assert!(
        rewards.iter().any(|r| *r != rewards[0]),
        "the terminal paths differ, so the ranking decides: {rewards:?}"
    );
    assert_best_path(&result, beam_best_path(&result, 2));
    let path = result["best_path"].as_array().unwrap();
    assert_eq!(
        Some(path.len() as u64),
        result["details"]["final_depth"].as_u64(),
        "the best path runs to the depth limit: {result}"
    );

    let entries = read_log(&dir.join("run.log")).unwrap().entries;
    let Some(Entry::End(end)) = entries.last() else {
        panic!("no end frame")
    };
    let EndStatus::Finished(outcome) = &end.status else {
        panic!("{end:?}")
    };
    assert_eq!(
        Some(outcome.best_prompt.clone().unwrap()),
        result["best_prompt"].as_str().map(str::to_owned)
    );
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(log.contains("[node 0]"), "{log}");
}

#[test]
fn a_judgement_of_all_fives_keeps_the_prompt_and_adds_a_level() {
    let work = tempfile::tempdir().unwrap();
    let flags = ["--depth", "3", "--beam-size", "2", "--n-actions", "2"];
    // The query the first level is scored on (the host's sample depends on the seed alone).
    let probe = beam_run(&Server::start(), work.path(), "probe", &flags);
    assert!(probe.status.success(), "{}", text(&probe));
    let query = result_json(&work.path().join("probe"))["tree"][1]["details"]["query"]
        .as_str()
        .unwrap()
        .to_owned();

    let asked = query.clone();
    let server = judge_scoring(&[5], move |request| {
        request["messages"].as_array().is_some_and(|messages| {
            messages
                .iter()
                .any(|m| m["content"].as_str().is_some_and(|c| c.contains(&asked)))
        })
    });
    let out = beam_run(&server, work.path(), "run", &flags);
    assert!(out.status.success(), "{}", text(&out));
    let dir = work.path().join("run");
    let result = result_json(&dir);
    let tree = result["tree"].as_array().unwrap();
    let perfect: Vec<&Value> = tree
        .iter()
        .filter(|n| n["details"]["query"] == query.as_str())
        .collect();
    assert_eq!(perfect.len(), 2, "both children of the root: {result}");
    for node in perfect {
        assert_eq!(node["details"]["skip"], "all_fives", "{node}");
        assert_eq!(node["reward"].as_f64(), Some(5.0), "{node}");
        let children: Vec<&Value> = tree
            .iter()
            .filter(|child| child["parent"] == node["id"])
            .collect();
        assert_eq!(children.len(), 1, "a kept prompt has one child: {result}");
        assert_eq!(children[0]["details"]["origin"], "kept");
        assert_eq!(children[0]["prompt"], node["prompt"]);
    }
    // One level more than asked, granted once for the level although both beams skipped.
    assert_eq!(result["details"]["final_depth"], 4, "{result}");
    assert_eq!(result["best_path"].as_array().unwrap().len(), 4);
    assert_best_path(&result, beam_best_path(&result, 2));
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert_eq!(
        log.matches("all scores are 5; keeping the prompt").count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("depth limit raised to").count(), 1, "{log}");
    assert!(log.contains("depth limit raised to 4"), "{log}");
}

#[test]
fn in_context_examples_are_retrieved_through_the_hosts_embedding_endpoint() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(
        &server,
        work.path(),
        "run",
        &[
            "--depth",
            "2",
            "--beam-size",
            "1",
            "--n-actions",
            "1",
            "--k",
            "2",
            "--embedding-model-name",
            "test-embedder",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let embeddings: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|(path, _)| path.ends_with("/embeddings"))
        .collect();
    assert!(
        !embeddings.is_empty(),
        "the strategy embedded its queries and examples"
    );
    assert_eq!(embeddings[0].1["model"], "test-embedder");
    assert!(
        !text(&out).contains("no embeddings"),
        "retrieval was used, not the fixed examples: {}",
        text(&out)
    );
    // Without an embedding model the run says so once and uses the fixed examples.
    let out = beam_run(
        &server,
        work.path(),
        "fixed",
        &["--depth", "2", "--beam-size", "1", "--n-actions", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out).matches("no embeddings").count(),
        1,
        "{}",
        text(&out)
    );
}

#[test]
fn a_judgement_cut_short_by_the_length_limit_is_counted_unusable() {
    // A third of the judgements (by the request's digest) stop at the token limit halfway
    // through their JSON, as a real model's do when `max_tokens` is too small.
    let server = Server::with_script(|path, request| {
        let whole = default_reply(path, request);
        let body = if is_judgement(request) && digest(&request.to_string()).is_multiple_of(3) {
            let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
            let cut = text[..text.len() / 2].to_owned();
            completion(request, vec![cut], "length")
        } else {
            whole
        };
        Reply {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    });
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(
        &server,
        work.path(),
        "run",
        &["--depth", "3", "--beam-size", "2", "--n-actions", "2"],
    );
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let dir = work.path().join("run");
    let (mut asked, mut cut) = (0, 0);
    for entry in read_log(&dir.join("run.log")).unwrap().entries {
        let Entry::Call(call) = entry else { continue };
        let (CallRequest::Complete(batch), CallResponse::Complete(results)) =
            (&call.request, &call.response)
        else {
            continue;
        };
        for (request, result) in batch.iter().zip(results) {
            if request.role != drpo_host::bindings::types::Role::Judge {
                continue;
            }
            asked += 1;
            let answer = &result
                .as_ref()
                .expect("every judgement was answered")
                .choices[0];
            cut += usize::from(serde_json::from_str::<Value>(answer).is_err());
        }
    }
    assert!(cut > 0 && cut < asked, "{cut} of {asked} judgements cut");
    assert!(
        printed.contains(&format!("usable judgements: {} of {asked}", asked - cut)),
        "{printed}"
    );
    let unusable = result_json(&dir)["tree"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["details"]["skip"] == "no_judgement" && n["reward"] == 0.0)
        .count();
    assert_eq!(
        unusable, cut,
        "each cut judgement is a node with no usable judgement"
    );
}

#[test]
fn beam_asks_for_its_training_queries_and_the_host_draws_them_from_the_published_layout() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let alpaca: Vec<Value> = (0..8)
        .map(|i| serde_json::json!({"instruction": format!("alpaca task {i}"), "output": ""}))
        .collect();
    let lima: Vec<Value> = (0..4)
        .map(|i| serde_json::json!({"query": format!("lima question {i}"), "category": "wikihow"}))
        .collect();
    let harmful: String = (0..4).map(|i| format!("harmful request {i}\n")).collect();
    std::fs::write(
        data.join("alpaca_train.json"),
        Value::from(alpaca).to_string(),
    )
    .unwrap();
    std::fs::write(
        data.join("lima_subsample_train.json"),
        Value::from(lima).to_string(),
    )
    .unwrap();
    std::fs::write(data.join("mal_train.txt"), harmful).unwrap();

    let data_flag = data.display().to_string();
    let run = beam_run(
        &server,
        work.path(),
        "published",
        &[
            "--data",
            &data_flag,
            "--num-training-examples",
            "6",
            "--depth",
            "1",
        ],
    );
    assert!(run.status.success(), "{}", text(&run));
    let run_dir = work.path().join("published");
    let log = read_log(&run_dir.join("run.log")).unwrap();
    let (limit, queries) = log
        .entries
        .iter()
        .find_map(|entry| match entry {
            Entry::Call(call) => match (&call.request, &call.response) {
                (CallRequest::Queries { limit }, CallResponse::Queries(queries)) => {
                    Some((*limit, queries.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .expect("beam asks for its queries");
    // The strategy asks for its num_training_examples; the host draws that many in the
    // published proportions of 8, 4 and 4 queries: floor(6 * size / 16) = 3, 1, 1, and the
    // one left over goes to the first pool.
    assert_eq!(limit, Some(6));
    let pool = |tag: &str| queries.iter().filter(|q| q.tags[0] == tag).count();
    assert_eq!(
        (pool("alpaca"), pool("lima"), pool("harmful")),
        (4, 1, 1),
        "{queries:?}"
    );
    assert_replays(&work.path().join("cache"), &run_dir);
}

#[test]
fn patience_ends_a_search_that_stops_improving_and_says_so() {
    // Every aspect of every answer scores 3: no level after the first improves on it.
    let server = judge_scoring(&[3], |_| true);
    let work = tempfile::tempdir().unwrap();
    let flags = ["--depth", "10", "--n-actions", "2", "--patience", "2"];
    let out = beam_run(&server, work.path(), "run", &flags);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ended early: patience: no better score for 2 level(s) since level 1"),
        "{}",
        text(&out)
    );
    let dir = work.path().join("run");
    let result = result_json(&dir);
    assert_eq!(
        result["details"]["patience"],
        serde_json::json!({"levels": 2, "ended_after_level": 3, "best_level": 1})
    );
    let deepest = result["tree"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["depth"].as_u64())
        .max();
    assert_eq!(deepest, Some(3), "{result}");
    let inspect = drpo_tests::output(host(&work.path().join("cache")).arg("inspect").arg(&dir));
    assert!(
        text(&inspect).contains("ended early    patience:"),
        "{}",
        text(&inspect)
    );
    assert_replays(&work.path().join("cache"), &dir);
}

#[test]
fn validation_chooses_the_prompt_best_on_held_out_queries_and_replays() {
    // Five queries reach the plugin (3 to search, 2 held out, drawn with seed 0). The base model
    // says which prompt it answered under; the judge gives the initial prompt 1 on the search's
    // queries and 5 on the held-out ones, every other prompt 3. So the search prefers any
    // optimized prompt, and the held-out queries prefer the initial one.
    let queries = drpo::data::parse_queries_jsonl(drpo::data::DEMO_QUERIES_JSONL).unwrap();
    let first_five: Vec<_> = queries.into_iter().take(5).collect();
    let (_, held_out) = drpo::validation::split(first_five, 2, 0).unwrap();
    let held_texts: Vec<String> = held_out.iter().map(|q| q.text.clone()).collect();
    let server = Server::with_script(move |path, request| {
        let messages = request["messages"].as_array();
        let is_base = messages.is_some() && request["response_format"].is_null();
        let body = if is_base && !path.ends_with("/embeddings") {
            let under_root = request.to_string().contains("[ROOT]");
            let answer = if under_root {
                "MARK-ROOT"
            } else {
                "MARK-OTHER"
            };
            completion(request, vec![answer.to_owned()], "stop")
        } else if is_judgement(request) {
            let text = request.to_string();
            let held = held_texts.iter().any(|q| text.contains(q.as_str()));
            let score = match (text.contains("MARK-ROOT"), held) {
                (true, true) => 5,
                (true, false) => 1,
                (false, _) => 3,
            };
            let mut narrowed = request.clone();
            let aspects = narrowed["response_format"]["json_schema"]["schema"]["properties"]
                .as_object_mut()
                .unwrap();
            for aspect in aspects.values_mut() {
                aspect["properties"]["score"]["enum"] = Value::from(vec![score]);
            }
            default_reply(path, &narrowed)
        } else {
            default_reply(path, request)
        };
        Reply::new(200, body.to_string())
    });
    let work = tempfile::tempdir().unwrap();
    let flags = [
        "--initial-system-prompt",
        "Answer with care. [ROOT]",
        "--depth",
        "3",
        "--n-actions",
        "2",
        "--num-training-examples",
        "3",
        "--validation",
        "2",
    ];
    let out = beam_run(&server, work.path(), "run", &flags);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("validation on 2 held-out queries chose node 0 (held-out mean 5.00")
            && printed.contains("best score: 5.0000 (mean on the held-out queries)"),
        "{printed}"
    );
    let dir = work.path().join("run");
    let result = result_json(&dir);
    assert_eq!(result["best_prompt"], "Answer with care. [ROOT]");
    assert_eq!(result["best_path"], serde_json::json!([0]));
    let validation = &result["details"]["validation"];
    let ids: Vec<&str> = held_out.iter().map(|q| q.id.as_str()).collect();
    assert_eq!(validation["queries"], serde_json::json!(ids));
    assert_ne!(validation["best_by_search_node"], 0, "{validation}");
    let searched: Vec<&str> = result["tree"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["details"]["query_id"].as_str())
        .collect();
    assert!(
        searched.iter().all(|id| !ids.contains(id)),
        "the search never judged a held-out query: {searched:?}"
    );
    let scores: Vec<(f64, f64)> = validation["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["search_score"].as_f64().unwrap_or(0.0),
                c["validation_score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        scores.last(),
        Some(&(0.0, 5.0)),
        "the root: no search score"
    );
    assert!(
        scores[..scores.len() - 1].iter().all(|s| *s == (3.0, 3.0)),
        "{scores:?}"
    );

    let dom = drpo_tests::browser::dump_dom(&dir.join("tree.html"), "");
    let table = dom
        .split("id=\"validation-table\"")
        .nth(1)
        .expect("tree.html in headless Chromium shows the validation table");
    assert!(
        table.contains("<td class=\"score\">5</td><td>chosen</td>")
            && table.contains(
                "<td class=\"score\">3</td><td class=\"score\">3</td><td>best by search</td>"
            ),
        "{table}"
    );

    let inspect = drpo_tests::output(host(&work.path().join("cache")).arg("inspect").arg(&dir));
    assert!(
        text(&inspect).contains("validation     validation on 2 held-out queries chose node 0"),
        "{}",
        text(&inspect)
    );
    let replayed = assert_replays(&work.path().join("cache"), &dir);
    assert!(
        replayed.contains("same outcome (best score 5.0000)"),
        "{replayed}"
    );
}

#[test]
fn a_judge_asked_per_aspect_gets_one_request_per_aspect_and_replays() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let flags = ["--depth", "2", "--n-actions", "2"];
    let together = beam_run(&server, work.path(), "together", &flags);
    assert!(together.status.success(), "{}", text(&together));
    let apart = beam_run(
        &server,
        work.path(),
        "apart",
        &[&flags[..], &["--judge-per-aspect"]].concat(),
    );
    assert!(apart.status.success(), "{}", text(&apart));
    let (one, each) = (
        counts(&work.path().join("together")),
        counts(&work.path().join("apart")),
    );
    assert_eq!(one.base, each.base, "{one:?} {each:?}");
    // Every judge request rates one aspect, and the answers' judgements are split among them.
    let mut aspects_asked = 0;
    for entry in read_log(&work.path().join("apart").join("run.log"))
        .unwrap()
        .entries
    {
        let Entry::Call(call) = entry else { continue };
        let CallRequest::Complete(batch) = &call.request else {
            continue;
        };
        for request in batch.iter().filter(|r| r.role == Role::Judge) {
            let schema: Value =
                serde_json::from_str(request.json_schema.as_deref().unwrap()).unwrap();
            assert_eq!(schema["properties"].as_object().unwrap().len(), 1);
            aspects_asked += 1;
        }
    }
    assert_eq!(aspects_asked, each.judge);
    assert!(each.judge > one.judge, "{one:?} {each:?}");
    assert_eq!(
        result_json(&work.path().join("apart"))["details"]["judgements"],
        result_json(&work.path().join("together"))["details"]["judgements"]
    );
    assert_replays(&work.path().join("cache"), &work.path().join("apart"));
}

#[test]
fn a_judge_asked_twice_per_answer_reports_its_spread_and_replays() {
    // The loopback server's scores follow a digest of the whole request, seed included, so the
    // two judgements of one answer differ as a sampling judge's would.
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let flags = [
        "--depth",
        "2",
        "--n-actions",
        "2",
        "--judge-repeats",
        "2",
        "--judge-temperature",
        "0.7",
    ];
    let out = beam_run(&server, work.path(), "run", &flags);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("judge spread over 2 repeats: the repeats agreed on"),
        "{}",
        text(&out)
    );
    let dir = work.path().join("run");
    let counts = counts(&dir);
    assert_eq!(counts.judge, 2 * counts.base, "{counts:?}");
    let spread = &result_json(&dir)["details"]["judge_spread"];
    assert_eq!(spread["repeats"], 2);
    assert!(spread["agreement"].as_f64().unwrap() < 1.0, "{spread}");
    let inspect = drpo_tests::output(host(&work.path().join("cache")).arg("inspect").arg(&dir));
    assert!(text(&inspect).contains("judge spread   judge spread over 2 repeats"));
    assert_replays(&work.path().join("cache"), &dir);

    let refused = beam_run(
        &server,
        work.path(),
        "greedy-judge",
        &["--judge-repeats", "2"],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("needs judge_temperature above 0"),
        "{}",
        text(&refused)
    );
}

#[test]
fn a_pairwise_reward_compares_each_candidate_with_its_parent_and_replays() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let flags = ["--depth", "2", "--n-actions", "2", "--reward", "pairwise"];
    let out = beam_run(&server, work.path(), "pairwise", &flags);
    assert!(out.status.success(), "{}", text(&out));
    let dir = work.path().join("pairwise");
    // The root, then its prompt again beside its two candidates, on the next query.
    let counts = counts(&dir);
    assert_eq!(counts.base, 4, "{counts:?}");
    let mut comparisons = 0;
    for entry in read_log(&dir.join("run.log")).unwrap().entries {
        let Entry::Call(call) = entry else { continue };
        let CallRequest::Complete(batch) = &call.request else {
            continue;
        };
        comparisons += batch
            .iter()
            .filter(|r| r.role == Role::Judge)
            .filter(|r| {
                r.json_schema
                    .as_deref()
                    .is_some_and(|s| s.contains("\"better\""))
            })
            .count();
    }
    // Each candidate in both orders, beside the four answers' own judgements.
    assert_eq!(comparisons, 4, "{counts:?}");
    assert_eq!(counts.judge, 4 + comparisons);
    let details = &result_json(&dir)["details"];
    let outcomes = &details["comparisons"];
    let compared: u64 = ["wins", "ties", "losses", "unusable"]
        .iter()
        .map(|k| outcomes[k].as_u64().unwrap())
        .sum();
    assert_eq!(compared, 2, "{outcomes}");
    assert_eq!(details["judgements"]["asked"], 4 + 4);
    assert!(
        text(&out).contains("pairwise reward: the candidates won"),
        "{}",
        text(&out)
    );
    let inspect = drpo_tests::output(host(&work.path().join("cache")).arg("inspect").arg(&dir));
    assert!(
        text(&inspect).contains("comparisons    pairwise reward"),
        "{}",
        text(&inspect)
    );
    assert_replays(&work.path().join("cache"), &dir);

    let refused = beam_run(&server, work.path(), "refused", &["--reward", "relative"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("pairwise"), "{}", text(&refused));
}
