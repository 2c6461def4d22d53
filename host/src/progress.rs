//! Progress of a run on stderr: a bar on a terminal, plain lines otherwise.
//!
//! Everything shown comes from the calls the session answers, so it works for any strategy:
//! levels are the depths of the nodes recorded so far (out of the levels the strategy's plan
//! names, when it searches by levels), calls are the import calls answered, tokens the sum of
//! every completion's usage, money those tokens at each role's model's price. While a batch is
//! answered, the tokens models in this process have generated for it so far are shown too, so a
//! long local batch is seen advancing.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use drpo_models::PrefillProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::bindings::types::Role;
use crate::calls::Calls;
use crate::runlog::{CallRecord, CallRequest, CallResponse, RoleModel};
use crate::runtime::Observer;
use crate::spending::accounting::model_of;
use crate::spending::pricing::{Money, PriceTable};

/// What each role's tokens cost: the role's model (from the run log header) priced by the run's
/// price table.
pub struct RolePrices {
    models: Vec<RoleModel>,
    table: PriceTable,
}

impl RolePrices {
    /// The prices of the models in `models`, the run log header's list.
    pub fn new(models: &[RoleModel], table: PriceTable) -> RolePrices {
        RolePrices {
            models: models.to_vec(),
            table,
        }
    }

    fn cost(&self, role: Role, prompt: u64, completion: u64) -> Money {
        match model_of(&self.models, role) {
            Some(model) => self.table.cost(model, prompt, completion),
            None if prompt == 0 && completion == 0 => Money::ZERO,
            None => Money::Unknown,
        }
    }
}

/// How often a plain line is printed when nothing else prompts one.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// How often a bar shows the tokens of the batch in flight.
const BAR_EVERY: Duration = Duration::from_secs(1);

/// What the providers working for a run can tell its display.
pub trait Workers: Send + Sync {
    /// Lines on the work done so far (see `Router::work`), shown at each new level and at the
    /// end.
    fn report(&self) -> Vec<String>;

    /// Tokens generated so far by the models in this process (see `Router::tokens_generated`);
    /// `None` when no provider generates in this process.
    fn tokens_generated(&self) -> Option<u64>;

    /// How far the prefills of the models in this process have come (see
    /// `Router::prefill_progress`); `None` when no provider generates in this process.
    fn prefill_progress(&self) -> Option<PrefillProgress>;
}

impl Workers for Calls {
    fn report(&self) -> Vec<String> {
        self.router().work()
    }

    fn tokens_generated(&self) -> Option<u64> {
        self.router().tokens_generated()
    }

    fn prefill_progress(&self) -> Option<PrefillProgress> {
        self.router().prefill_progress()
    }
}

/// Where plain progress lines go (stderr, but for tests).
type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

/// A plain progress line: `shown`, then the time since `started`.
fn plain_line(shown: &str, started: Instant) -> String {
    format!(
        "progress: {shown}, {:.1}s elapsed",
        started.elapsed().as_secs_f64()
    )
}

/// Counts a run's progress and shows it.
pub struct Progress {
    display: Display,
    started: Instant,
    /// Levels the strategy means to search (its plan's `levels`), when known.
    planned_levels: Option<u64>,
    /// The deepest node recorded so far.
    deepest: Option<u32>,
    nodes: u64,
    calls: u64,
    /// Requests of the `complete` call being answered now.
    in_flight: usize,
    tokens: u64,
    prices: RolePrices,
    money: Money,
    /// The providers working for the run: what they have done, shown at each new level and at
    /// the end, and the tokens of the batch in flight, shown by `ticker`.
    workers: Option<Arc<dyn Workers>>,
    /// Shows the batch in flight advancing, from its request to its answer.
    ticker: Option<Ticker>,
}

enum Display {
    Bar(ProgressBar),
    Lines {
        last: Option<Instant>,
        out: LineSink,
        every: Duration,
    },
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise. `planned_levels` is the levels
    /// of the strategy's plan, when it searches by levels.
    pub fn on_stderr(planned_levels: Option<u32>, prices: RolePrices) -> Progress {
        let planned_levels = planned_levels.map(u64::from);
        let display = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(planned_levels, ProgressDrawTarget::stderr());
            let template = if planned_levels.is_some() {
                "{spinner} [{elapsed_precise}] {bar:30} {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("the progress template is valid")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            Display::Lines {
                last: None,
                out: Arc::new(|line| eprintln!("{line}")),
                every: PLAIN_EVERY,
            }
        };
        Progress::with_display(display, planned_levels, prices)
    }

    fn with_display(display: Display, planned_levels: Option<u64>, prices: RolePrices) -> Progress {
        Progress {
            display,
            started: Instant::now(),
            planned_levels,
            deepest: None,
            nodes: 0,
            calls: 0,
            in_flight: 0,
            tokens: 0,
            prices,
            money: Money::ZERO,
            workers: None,
            ticker: None,
        }
    }

    /// Shows what `workers` have done at each new level and at the end, and the tokens they
    /// generate while a batch is answered.
    pub fn with_workers(mut self, workers: Arc<dyn Workers>) -> Progress {
        self.workers = Some(workers);
        self
    }

    /// Prints the workers' lines, if any.
    fn show_work(&self) {
        if let Some(workers) = &self.workers {
            for line in workers.report() {
                self.print_line(&format!("  {line}"));
            }
        }
    }

    /// Prints a line on stderr above the bar (a bare `eprintln!` would tear it).
    pub fn print_line(&self, line: &str) {
        match &self.display {
            Display::Bar(bar) => bar.suspend(|| eprintln!("{line}")),
            Display::Lines { out, .. } => out(line),
        }
    }

    /// Levels completed: every depth up to the deepest node recorded.
    fn levels_done(&self) -> u64 {
        self.deepest.map_or(0, |d| u64::from(d) + 1)
    }

    /// The levels to reach: the planned depth, or more when the strategy went deeper (beam
    /// may grant extra levels).
    fn levels_total(&self) -> Option<u64> {
        self.planned_levels.map(|p| p.max(self.levels_done()))
    }

    /// One line: level, calls, tokens, money, nodes.
    fn summary(&self) -> String {
        let level = match self.levels_total() {
            Some(total) => format!("level {} of {total}", self.levels_done()),
            None => format!("{} levels", self.levels_done()),
        };
        let in_flight = match self.in_flight {
            0 => String::new(),
            1 => " (1 request in flight)".to_owned(),
            n => format!(" ({n} requests in flight)"),
        };
        format!(
            "{level}, {} calls{in_flight}, {} tokens, {}, {} nodes",
            self.calls, self.tokens, self.money, self.nodes
        )
    }

    /// Seconds left at the pace of the levels done so far; none once the planned levels are
    /// done, when what is left (a last level, levels a strategy adds to its plan, a
    /// validation) is not told by the pace.
    fn eta(&self) -> Option<Duration> {
        let done = self.levels_done();
        let total = self.levels_total()?;
        (done > 0 && done < total).then(|| {
            self.started
                .elapsed()
                .mul_f64((total - done) as f64 / done as f64)
        })
    }

    /// The summary with the ETA.
    fn shown(&self) -> String {
        // The ETA is ours, not the bar's: the bar's reads 0 s before the first level is done.
        let eta = self
            .eta()
            .map(|e| format!(", ETA {:.0}s", e.as_secs_f64()))
            .unwrap_or_default();
        format!("{}{eta}", self.summary())
    }

    fn show(&mut self, level_changed: bool) {
        let summary = self.shown();
        let (done, total) = (self.levels_done(), self.levels_total());
        match &mut self.display {
            Display::Bar(bar) => {
                if let Some(total) = total {
                    bar.set_length(total);
                    bar.set_position(done);
                }
                bar.set_message(summary);
            }
            Display::Lines { last, out, every } => {
                let due = last.is_none_or(|t| t.elapsed() >= *every);
                if level_changed || due {
                    *last = Some(Instant::now());
                    out(&plain_line(&summary, self.started));
                }
            }
        }
        if level_changed {
            self.show_work();
        }
    }
}

impl Progress {
    /// Counts a `record-node` call whose node did not fit the tree (see [`crate::tree`]): a
    /// call, but neither a node nor a level.
    pub fn on_refused_node(&mut self) {
        self.stop_ticker();
        self.calls += 1;
        self.in_flight = 0;
        self.show(false);
    }
}

impl Progress {
    /// Shows the batch just sent advancing until its answer: the tokens generated for it by
    /// the models in this process, and, in plain lines, a line every so often.
    fn start_ticker(&mut self) {
        self.stop_ticker();
        let Some(workers) = self.workers.clone() else {
            return;
        };
        let (display, every) = match &self.display {
            // A bar's clock runs by itself: only generated tokens are news.
            Display::Bar(_) if workers.tokens_generated().is_none() => return,
            Display::Bar(bar) => (Tick::Bar(bar.clone()), BAR_EVERY),
            Display::Lines { out, every, .. } => (Tick::Lines(out.clone()), *every),
        };
        self.ticker = Some(Ticker::start(
            display,
            every,
            workers,
            self.shown(),
            self.started,
        ));
    }

    fn stop_ticker(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

/// What a batch in flight that has no token yet shows: how much of its prompts the model has
/// read since `before`, when it says.
fn prompts_read(before: Option<PrefillProgress>, now: Option<PrefillProgress>) -> String {
    match (before, now) {
        (Some(before), Some(now)) if now.planned > before.planned => {
            let planned = now.planned - before.planned;
            let read = now.read.saturating_sub(before.read).min(planned);
            format!(
                ", reading its prompts: {}% ({read} of {planned} positions), no token yet",
                read * 100 / planned
            )
        }
        _ => ", no token generated for it yet (prompts being read)".to_owned(),
    }
}

/// Where a [`Ticker`] shows its news.
enum Tick {
    Bar(ProgressBar),
    Lines(LineSink),
}

/// A thread showing the batch in flight advancing, until stopped.
struct Ticker {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Ticker {
    /// Every `every`, shows `shown` (the summary when the batch was sent) with the tokens
    /// `workers` have generated since, and in plain lines the time since `started`.
    fn start(
        display: Tick,
        every: Duration,
        workers: Arc<dyn Workers>,
        shown: String,
        started: Instant,
    ) -> Ticker {
        let (stop, stopped) = mpsc::channel::<()>();
        let before = workers.tokens_generated();
        let read_before = workers.prefill_progress();
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let generated = match (before, workers.tokens_generated()) {
                    // A local model reads its prompts (prefill) before the first token.
                    (Some(before), Some(now)) if now == before => {
                        prompts_read(read_before, workers.prefill_progress())
                    }
                    (Some(before), Some(now)) => {
                        format!(", {} tokens generated for it so far", now - before)
                    }
                    _ => String::new(),
                };
                match &display {
                    Tick::Bar(bar) => bar.set_message(format!("{shown}{generated}")),
                    Tick::Lines(out) => out(&plain_line(&format!("{shown}{generated}"), started)),
                }
            }
        });
        Ticker { stop, thread }
    }

    /// Stops the thread; once this returns it shows nothing more.
    fn stop(self) {
        let _ = self.stop.send(());
        // A panic in the thread (a broken stderr) has nothing left to show.
        let _ = self.thread.join();
    }
}

impl Observer for Progress {
    fn on_request(&mut self, request: &CallRequest) {
        if let CallRequest::Complete(batch) = request {
            self.in_flight = batch.len();
            self.show(false);
            self.start_ticker();
        }
    }

    fn on_call(&mut self, record: &CallRecord, _replayed: bool) {
        self.stop_ticker();
        self.calls += 1;
        self.in_flight = 0;
        let mut level_changed = false;
        match (&record.request, &record.response) {
            (CallRequest::Complete(batch), CallResponse::Complete(results)) => {
                for (request, result) in batch.iter().zip(results) {
                    let Ok(completion) = result else { continue };
                    let (prompt, generated) = (
                        u64::from(completion.usage.prompt_tokens),
                        u64::from(completion.usage.completion_tokens),
                    );
                    self.tokens += prompt + generated;
                    self.money = self
                        .money
                        .plus(self.prices.cost(request.role, prompt, generated));
                }
            }
            (CallRequest::RecordNode(node), _) => {
                self.nodes += 1;
                if self.deepest.is_none_or(|d| node.depth > d) {
                    self.deepest = Some(node.depth);
                    level_changed = true;
                }
            }
            _ => {}
        }
        self.show(level_changed);
    }
}

impl Drop for Progress {
    /// The run is over: a bar clears itself, plain output ends with the totals.
    fn drop(&mut self) {
        self.stop_ticker();
        match &self.display {
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines { out, .. } => out(&format!(
                "{}, done",
                plain_line(&self.summary(), self.started)
            )),
        }
        self.show_work();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::{Completion, Node, Request, Usage};
    use crate::runlog::Provenance;
    use crate::testing::chat_request;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn record(request: CallRequest, response: CallResponse) -> CallRecord {
        CallRecord {
            index: 0,
            request,
            response,
            provenance: Provenance::default(),
        }
    }

    fn node(depth: u32) -> CallRecord {
        let node = Node {
            id: 0,
            parent: None,
            depth,
            prompt: String::new(),
            reward: 0.0,
            details: String::new(),
        };
        record(CallRequest::RecordNode(node), CallResponse::Unit)
    }

    fn lines(levels: Option<u64>) -> Progress {
        lines_to(levels, Arc::new(|line| eprintln!("{line}")), PLAIN_EVERY)
    }

    /// Plain lines to `out`, printed at least every `every`.
    fn lines_to(levels: Option<u64>, out: LineSink, every: Duration) -> Progress {
        let models =
            [("judge", "custom-judge"), ("base", "local:model.gguf")].map(|(role, model)| {
                RoleModel {
                    role: role.into(),
                    model: model.into(),
                    provider: String::new(),
                }
            });
        let prices = [(
            "custom-judge".to_string(),
            crate::spending::pricing::Price {
                input: 1.0,
                output: 2.0,
            },
        )]
        .into();
        let prices = RolePrices::new(&models, PriceTable::new(&prices));
        Progress::with_display(
            Display::Lines {
                last: None,
                out,
                every,
            },
            levels,
            prices,
        )
    }

    /// An answer of one token to a prompt of one.
    fn one_token_each() -> Completion {
        Completion {
            choices: vec!["a".into()],
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
            },
        }
    }

    /// A model in process that has generated `tokens` so far, and whose prefills have planned
    /// and read `planned` and `read` positions.
    #[derive(Default)]
    struct Generating {
        tokens: AtomicU64,
        planned: AtomicU64,
        read: AtomicU64,
    }

    impl Workers for Generating {
        fn report(&self) -> Vec<String> {
            Vec::new()
        }

        fn tokens_generated(&self) -> Option<u64> {
            Some(self.tokens.load(Ordering::SeqCst))
        }

        fn prefill_progress(&self) -> Option<PrefillProgress> {
            Some(PrefillProgress {
                planned: self.planned.load(Ordering::SeqCst),
                read: self.read.load(Ordering::SeqCst),
            })
        }
    }

    /// Waits until a line of `shown` passes `test`.
    fn wait_for(shown: &Mutex<Vec<String>>, test: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !shown.lock().unwrap().iter().any(|l| test(l)) {
            assert!(Instant::now() < deadline, "{:?}", shown.lock().unwrap());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_batch_in_flight_shows_the_tokens_generated_for_it_until_it_is_answered() {
        let shown = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = shown.clone();
        let out: LineSink = Arc::new(move |line| sink.lock().unwrap().push(line.to_owned()));
        // Tokens generated and positions read before the batch was sent are not its own.
        let workers = Arc::new(Generating {
            tokens: AtomicU64::new(100),
            planned: AtomicU64::new(1000),
            read: AtomicU64::new(1000),
        });
        let mut progress =
            lines_to(Some(2), out, Duration::from_millis(5)).with_workers(workers.clone());
        let batch = vec![request(Role::Judge), request(Role::Base)];
        progress.on_request(&CallRequest::Complete(batch.clone()));
        wait_for(&shown, |l| l.contains("prompts being read"));
        workers.planned.fetch_add(200, Ordering::SeqCst);
        workers.read.fetch_add(50, Ordering::SeqCst);
        wait_for(&shown, |l| {
            l.contains(", reading its prompts: 25% (50 of 200 positions), no token yet")
        });
        workers.tokens.fetch_add(42, Ordering::SeqCst);
        wait_for(&shown, |l| {
            l.contains("(2 requests in flight)") && l.contains(", 42 tokens generated for it")
        });
        let answer = Ok(one_token_each());
        progress.on_call(
            &record(
                CallRequest::Complete(batch),
                CallResponse::Complete(vec![answer.clone(), answer]),
            ),
            false,
        );
        let lines_then = shown.lock().unwrap().len();
        workers.tokens.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        let lines = shown.lock().unwrap();
        assert_eq!(
            lines.len(),
            lines_then,
            "the answer stopped the news: {lines:?}"
        );
        assert!(!lines.last().unwrap().contains("in flight"), "{lines:?}");
    }

    fn request(role: Role) -> Request {
        chat_request(role, "")
    }

    #[test]
    fn counts_levels_calls_tokens_money_and_nodes() {
        let mut progress = lines(Some(3));
        let completion = Completion {
            choices: vec!["a".into()],
            usage: Usage {
                prompt_tokens: 10_000,
                completion_tokens: 5_000,
            },
        };
        let batch = vec![request(Role::Judge), request(Role::Base)];
        progress.on_request(&CallRequest::Complete(batch.clone()));
        progress.on_call(
            &record(
                CallRequest::Complete(batch),
                CallResponse::Complete(vec![Ok(completion.clone()), Ok(completion)]),
            ),
            false,
        );
        progress.on_call(&node(0), false);
        progress.on_call(&node(1), false);
        progress.on_call(&node(1), false);
        // The judge's 10k in and 5k out at $1 and $2 per million; the local base model is free.
        assert_eq!(
            progress.summary(),
            "level 2 of 3, 4 calls, 30000 tokens, $0.02, 3 nodes"
        );
        assert!(progress.eta().is_some());
    }

    #[test]
    fn tokens_of_a_role_without_a_price_make_the_money_unknown() {
        let mut progress = lines(None);
        let completion = one_token_each();
        progress.on_call(
            &record(
                CallRequest::Complete(vec![request(Role::Optimizer)]),
                CallResponse::Complete(vec![Ok(completion)]),
            ),
            false,
        );
        assert!(
            progress.summary().contains(", unknown,"),
            "{}",
            progress.summary()
        );
    }

    #[test]
    fn a_strategy_that_goes_deeper_than_planned_raises_the_total() {
        let mut progress = lines(Some(2));
        for depth in 0..4 {
            progress.on_call(&node(depth), false);
        }
        assert_eq!(progress.levels_total(), Some(4));
        // Beam raised its depth limit: "ETA 0s" would claim the end, which is not known.
        assert_eq!(progress.eta(), None);
    }

    #[test]
    fn without_a_planned_depth_there_is_no_eta() {
        let mut progress = lines(None);
        progress.on_call(&node(0), false);
        assert!(progress.summary().starts_with("1 levels"));
        assert_eq!(progress.eta(), None);
    }
}
