//! Continuous batching: requests join the batch being decoded between two steps, and each one
//! leaves with its answer as soon as its choices are done, instead of a batch decoding to its
//! end while the requests that arrived meanwhile wait for the next.
//!
//! The batch's KV cache is left-padded: every row writes the same slot at each step. A request
//! joining is prefilled padded to where the rows decoding stand; when its prompt is longer, they
//! move right to make room ([`KvCache::relocate`]). Padding that every row has is dropped at the
//! next join, or when rows that are done leave. A row's answer depends neither on its padding
//! nor on the rows beside it, so each request gets the answer it gets alone.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::{Decoding, GenerationOutput, GenerationRequest, LocalModel, Row, TextObserver};
use crate::ModelError;
use crate::device::{PendingIds, greedy_ids};
use crate::llama::{KV_BUCKET, KvCache, Llama};

/// Told `(choice, text so far)` after each token of a request's choices.
pub type ChoiceObserver = Arc<dyn Fn(u32, &str) + Send + Sync>;

/// Told a request's output once every choice is done, or why it could not be answered.
pub type Finish = Box<dyn FnOnce(Result<GenerationOutput, ModelError>) + Send>;

/// A request for [`LocalModel::decode_arrivals`].
pub struct Arrival {
    /// What to generate.
    pub request: GenerationRequest,
    /// Told the text of each choice as it grows, when given.
    pub observer: Option<ChoiceObserver>,
    /// Told the output once the request is done.
    pub finish: Finish,
}

/// A request in the batch: whom to tell, and its answers so far.
struct Live {
    finish: Finish,
    output: GenerationOutput,
    /// Each choice's answer, once done.
    choices: Vec<Option<String>>,
    rows_left: usize,
}

/// The requests in the batch, by the index their rows carry; an index is reused once its
/// request is answered, so the tables grow only to the most requests decoded at once.
struct Requests<'a> {
    asked: Vec<GenerationRequest>,
    live: Vec<Option<Live>>,
    /// Read by the decoding threads, as each token is chosen.
    observers: &'a Mutex<Vec<Option<ChoiceObserver>>>,
    free: Vec<usize>,
}

impl Requests<'_> {
    /// An index for `request`, whose text as it grows is told to `observer`.
    fn enter(&mut self, request: GenerationRequest, observer: Option<ChoiceObserver>) -> usize {
        let index = self.free.pop().unwrap_or_else(|| {
            self.asked.push(request.clone());
            self.live.push(None);
            self.observers.lock().expect("observers").push(None);
            self.asked.len() - 1
        });
        self.asked[index] = request;
        self.observers.lock().expect("observers")[index] = observer;
        index
    }

    /// Frees `index` (an index in use), returning its request's [`Live`] if it had one.
    fn leave(&mut self, index: usize) -> Option<Live> {
        self.observers.lock().expect("observers")[index] = None;
        self.free.push(index);
        self.live[index].take()
    }
}

/// The batch being decoded: its rows (in the cache's order), each row's next input id and
/// whether its answer has been handed to its request.
struct Batch<'o, 'm, B: Backend> {
    decoding: Option<Decoding<'m, B>>,
    rows: Vec<Row<'o>>,
    next: Vec<i32>,
    delivered: Vec<bool>,
}

impl<B: Backend> Batch<'_, '_, B> {
    fn clear(&mut self) {
        self.decoding = None;
        self.rows.clear();
        self.next.clear();
        self.delivered.clear();
    }
}

impl LocalModel {
    /// Decodes the requests that `arrivals` brings, each joining the batch at the next step
    /// while there is room (at most `rows` rows, and the model's most,
    /// [`Self::set_max_batch_rows`]; a request takes a row per choice), until the
    /// channel is closed and every request is answered. Each request's `finish` is told its
    /// output as soon as its choices are done; a request the model cannot take (a prompt longer
    /// than its context, a bad sampling setting) is refused on its own. A failure while
    /// decoding fails the requests in the batch at that moment, and the next requests are
    /// decoded as usual; a panic of the CUDA backend is returned as an error.
    pub fn decode_arrivals(
        &self,
        arrivals: &Receiver<Arrival>,
        rows: usize,
    ) -> Result<(), ModelError> {
        let rows = rows.clamp(1, self.max_batch_rows);
        match &self.decoder {
            super::Decoder::Cpu(model) => self.decode_arrivals_on(model, arrivals, rows),
            #[cfg(feature = "cuda")]
            super::Decoder::Cuda(model) => crate::device::on_cuda(model.device().index, |_| {
                self.decode_arrivals_on(model, arrivals, rows)
            }),
        }
    }

    fn decode_arrivals_on<B: Backend>(
        &self,
        model: &Llama<B>,
        arrivals: &Receiver<Arrival>,
        most_rows: usize,
    ) -> Result<(), ModelError> {
        let observers = Mutex::new(Vec::new());
        let mut requests = Requests {
            asked: Vec::new(),
            live: Vec::new(),
            observers: &observers,
            free: Vec::new(),
        };
        // Borrowed by the rows of observed requests: it finds their observer by their index.
        let tell = |request: usize, choice: u32, text: &str| {
            let observer = observers.lock().expect("observers")[request].clone();
            if let Some(observer) = observer {
                observer(choice, text);
            }
        };
        let mut batch = Batch {
            decoding: None,
            rows: Vec::new(),
            next: Vec::new(),
            delivered: Vec::new(),
        };
        let mut held: Option<Arrival> = None;
        loop {
            let mut joining = Vec::new();
            loop {
                let idle = batch.rows.is_empty() && joining.is_empty();
                let arrival = match held.take() {
                    Some(arrival) => arrival,
                    None if idle => match arrivals.recv() {
                        Ok(arrival) => arrival,
                        Err(_) => return Ok(()),
                    },
                    None => match arrivals.try_recv() {
                        Ok(arrival) => arrival,
                        Err(_) => break,
                    },
                };
                let wanted = arrival.request.n as usize;
                if batch.rows.len() + joining.len() + wanted > most_rows {
                    if idle {
                        // More choices than the batch takes: in chunks of the model's most, alone.
                        let observer = arrival.observer.clone();
                        let tell_one = move |_: usize, choice: u32, text: &str| {
                            if let Some(observer) = &observer {
                                observer(choice, text);
                            }
                        };
                        let output = self
                            .generate_observed(
                                std::slice::from_ref(&arrival.request),
                                Some(&tell_one),
                            )
                            .map(|mut outputs| outputs.remove(0));
                        (arrival.finish)(output);
                        continue;
                    }
                    held = Some(arrival);
                    break;
                }
                let Arrival {
                    request,
                    observer,
                    finish,
                } = arrival;
                let observed = observer.is_some();
                let index = requests.enter(request, observer);
                let asked = &requests.asked[index];
                let rows = self
                    .rows_of(asked, index, observed.then_some(&tell as &TextObserver))
                    .and_then(|(prompt_tokens, rows)| {
                        let longest = rows.first().map_or(0, |r| r.prompt.len());
                        self.fits_context(longest)?;
                        Ok((prompt_tokens, rows))
                    });
                let (prompt_tokens, rows) = match rows {
                    Ok(rows) => rows,
                    Err(error) => {
                        requests.leave(index);
                        finish(Err(error));
                        continue;
                    }
                };
                requests.live[index] = Some(Live {
                    finish,
                    output: GenerationOutput {
                        choices: Vec::new(),
                        prompt_tokens,
                        completion_tokens: 0,
                        cramped_by_schema: None,
                    },
                    choices: vec![None; rows.len()],
                    rows_left: rows.len(),
                });
                if rows.iter().all(|row| row.done) {
                    let delivered = rows
                        .iter()
                        .try_for_each(|row| self.deliver(&mut requests, row));
                    match delivered {
                        Ok(()) if rows.is_empty() => self.answer(&mut requests, index),
                        Ok(()) => {}
                        Err(error) => {
                            if let Some(live) = requests.leave(index) {
                                (live.finish)(Err(error));
                            }
                        }
                    }
                    continue;
                }
                joining.extend(rows);
            }
            let stepped = self
                .join(model, &requests.asked, &mut batch, joining)
                .and_then(|()| self.deliver_done(&mut requests, &mut batch))
                .and_then(|()| self.step(&requests.asked, &mut batch));
            if let Err(error) = stepped {
                for index in 0..requests.live.len() {
                    if requests.live[index].is_some()
                        && let Some(live) = requests.leave(index)
                    {
                        (live.finish)(Err(again(&error)));
                    }
                }
                batch.clear();
            }
        }
    }

    /// Prefills the rows `joining` padded to where the batch stands (moving the batch when a
    /// prompt is longer, and dropping padding every row has), and chooses their first tokens.
    fn join<'o, 'm, B: Backend>(
        &self,
        model: &'m Llama<B>,
        asked: &[GenerationRequest],
        batch: &mut Batch<'o, 'm, B>,
        mut joining: Vec<Row<'o>>,
    ) -> Result<(), ModelError> {
        if joining.is_empty() {
            return Ok(());
        }
        let budget = self.budget(asked);
        let longest = joining.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let (len, least_pad) = match &batch.decoding {
            Some(d) => (
                d.cache.len(),
                d.cache.pads().iter().copied().min().unwrap_or(0),
            ),
            None => (0, 0),
        };
        let width = (len - least_pad).max(longest);
        let shift = width as isize - len as isize;
        // The slots a row still decoding needs: its padding, its prompt and its budget.
        let pads = batch.decoding.as_ref().map_or(&[][..], |d| d.cache.pads());
        let needed = batch
            .rows
            .iter()
            .zip(pads)
            .filter(|(row, _)| !row.done)
            .map(|(row, &pad)| pad.saturating_add_signed(shift) + row.prompt.len() + budget(row))
            .chain(joining.iter().map(|row| width + budget(row)))
            .max()
            .unwrap_or(0);
        let capacity = match batch.decoding.as_mut() {
            Some(d) if shift == 0 && needed <= d.cache.capacity() => d.cache.capacity(),
            Some(d) => {
                let capacity = needed.next_multiple_of(KV_BUCKET);
                d.cache.relocate(shift, capacity);
                capacity
            }
            None => needed.next_multiple_of(KV_BUCKET),
        };
        let prompts: Vec<&[u32]> = joining.iter().map(|r| r.prompt.as_slice()).collect();
        let (cache, logits) = self.prefill(model, &prompts, width, capacity);
        let first = self.choose(asked, &mut joining, logits)?;
        let cache = match batch.decoding.take() {
            Some(running) => {
                let (old, new) = (batch.rows.len(), joining.len());
                KvCache::merge(vec![
                    ((0..old).collect(), running.cache),
                    ((old..old + new).collect(), cache),
                ])
            }
            None => cache,
        };
        batch.delivered.extend(joining.iter().map(|_| false));
        batch.rows.extend(joining);
        batch.next.extend(first);
        batch.decoding = Some(Decoding {
            model,
            cache,
            active: (0..batch.rows.len()).collect(),
        });
        Ok(())
    }

    /// Hands every row just done its answer, and each request whose rows are all done its
    /// output; a batch with nothing left to decode is cleared.
    fn deliver_done<B: Backend>(
        &self,
        requests: &mut Requests<'_>,
        batch: &mut Batch<'_, '_, B>,
    ) -> Result<(), ModelError> {
        for (row, delivered) in batch.rows.iter().zip(batch.delivered.iter_mut()) {
            if row.done && !*delivered {
                *delivered = true;
                self.deliver(requests, row)?;
            }
        }
        if batch.rows.iter().all(|row| row.done) {
            batch.clear();
        }
        Ok(())
    }

    /// Adds `row`'s answer to its request's output, and answers the request once it has all.
    fn deliver(&self, requests: &mut Requests<'_>, row: &Row) -> Result<(), ModelError> {
        let asked = &requests.asked[row.request];
        let live = requests.live[row.request]
            .as_mut()
            .expect("a row's request is live until answered");
        let text = self.row_answer(asked, row, &mut live.output)?;
        live.choices[row.choice as usize] = Some(text);
        live.rows_left -= 1;
        if live.rows_left == 0 {
            self.answer(requests, row.request);
        }
        Ok(())
    }

    /// Tells request `index` its output and frees its index.
    fn answer(&self, requests: &mut Requests<'_>, index: usize) {
        if let Some(mut live) = requests.leave(index) {
            live.output.choices = live.choices.into_iter().flatten().collect();
            (live.finish)(Ok(live.output));
        }
    }

    /// One decoding step of the batch, if it has rows: rows that are done leave it first (once
    /// enough have, as in [`Decoding::drop_done`]), with the padding the others all have.
    fn step<B: Backend>(
        &self,
        asked: &[GenerationRequest],
        batch: &mut Batch<'_, '_, B>,
    ) -> Result<(), ModelError> {
        let Some(decoding) = batch.decoding.as_mut() else {
            return Ok(());
        };
        if let Some(kept) = decoding.drop_done(&batch.rows) {
            let mut keep = vec![false; batch.rows.len()];
            for &i in &kept {
                keep[i] = true;
            }
            let mut flags = keep.iter().copied();
            batch.rows.retain(|_| flags.next().expect("a flag per row"));
            batch.next = kept.iter().map(|&i| batch.next[i]).collect();
            batch.delivered = kept.iter().map(|&i| batch.delivered[i]).collect();
            decoding.active = (0..batch.rows.len()).collect();
            let least_pad = decoding.cache.pads().iter().copied().min().unwrap_or(0);
            if least_pad >= KV_BUCKET {
                let capacity = decoding.cache.capacity() - least_pad;
                decoding.cache.relocate(-(least_pad as isize), capacity);
            }
        }
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(batch.next.clone(), [batch.rows.len(), 1]),
            decoding.model.device(),
        );
        let logits = decoding.forward(ids);
        batch.next = self.choose(asked, &mut batch.rows, logits)?;
        Ok(())
    }

    /// Every row's next input id from a step's `[rows, vocab]` logits (one row per row of
    /// `rows`): chosen on the host when a row still decoding samples or follows a schema, else
    /// greedily on the device.
    fn choose<B: Backend>(
        &self,
        asked: &[GenerationRequest],
        rows: &mut [Row],
        logits: Tensor<B, 2>,
    ) -> Result<Vec<i32>, ModelError> {
        let budget = self.budget(asked);
        let on_host = rows.iter().any(|row| {
            !row.done && (asked[row.request].temperature != 0.0 || row.constraint.is_some())
        });
        if on_host {
            let active: Vec<usize> = (0..rows.len()).collect();
            return self.choose_on_host(asked, rows, &active, logits, &budget);
        }
        let kernels = self.decoder.kernels();
        let ids = PendingIds::read(greedy_ids(logits, kernels), kernels).wait()?;
        rows.iter_mut()
            .zip(ids)
            .map(|(row, id)| {
                if row.done {
                    Ok(self.filler())
                } else {
                    self.record(&asked[row.request], row, id as u32, budget(row))
                }
            })
            .collect()
    }
}

/// `error` again, for each request it fails.
fn again(error: &ModelError) -> ModelError {
    match error {
        ModelError::Usage(message) => ModelError::Usage(message.clone()),
        ModelError::Backend(message) => ModelError::Backend(message.clone()),
        other => ModelError::Backend(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{self, Sender};

    use super::super::tests::{ask, random_model};
    use super::*;

    /// The answers in the order they came: (request index, output or error).
    type Answers = Arc<Mutex<Vec<(usize, Result<GenerationOutput, String>)>>>;

    /// Request `index`, whose output (or error) goes to `answers`, and which then sends
    /// `then` (if any) into `arrivals`.
    fn arrival(
        index: usize,
        request: &GenerationRequest,
        answers: &Answers,
        then: Option<(Sender<Arrival>, Arrival)>,
    ) -> Arrival {
        let answers = answers.clone();
        Arrival {
            request: request.clone(),
            observer: None,
            finish: Box::new(move |output| {
                answers
                    .lock()
                    .unwrap()
                    .push((index, output.map_err(|e| e.to_string())));
                if let Some((arrivals, next)) = then {
                    arrivals.send(next).unwrap();
                }
            }),
        }
    }

    /// Decodes `long` (request 0), streamed; at its third token `joining` (requests 1...) join
    /// it; once the first of them is answered, `late` (the last request) joins. Checks that
    /// every request is answered once, as it is alone, and that the stream of `long` ends at its
    /// answer; returns the answers in the order they came.
    fn join_and_compare(
        model: &LocalModel,
        long: &GenerationRequest,
        joining: &[GenerationRequest],
        late: &GenerationRequest,
    ) -> Vec<(usize, Result<GenerationOutput, String>)> {
        let answers: Answers = Arc::default();
        let (arrivals, receiver) = mpsc::channel();
        let late_index = joining.len() + 1;
        let mut batch: Vec<Arrival> = joining
            .iter()
            .enumerate()
            .map(|(i, request)| arrival(i + 1, request, &answers, None))
            .collect();
        let then_late = (arrivals.clone(), arrival(late_index, late, &answers, None));
        batch[0] = arrival(1, &joining[0], &answers, Some(then_late));
        let batch = Mutex::new(Some(batch));
        let streamed = Arc::new(Mutex::new(String::new()));
        let (sender, tokens) = (arrivals.clone(), Mutex::new(0));
        let watched = streamed.clone();
        let observer: ChoiceObserver = Arc::new(move |_, text: &str| {
            *watched.lock().unwrap() = text.to_owned();
            let mut seen = tokens.lock().unwrap();
            *seen += 1;
            if *seen == 3 {
                for joining in batch.lock().unwrap().take().unwrap() {
                    sender.send(joining).unwrap();
                }
            }
        });
        let mut first = arrival(0, long, &answers, None);
        first.observer = Some(observer);
        arrivals.send(first).unwrap();
        drop(arrivals);
        model.decode_arrivals(&receiver, 8).unwrap();

        let answers = answers.lock().unwrap().clone();
        let requests: Vec<&GenerationRequest> =
            [long].into_iter().chain(joining).chain([late]).collect();
        let mut order: Vec<usize> = answers.iter().map(|(i, _)| *i).collect();
        order.sort();
        assert_eq!(order, (0..requests.len()).collect::<Vec<_>>());
        for (index, answer) in &answers {
            let alone = model
                .generate(std::slice::from_ref(requests[*index]))
                .map(|mut outputs| outputs.remove(0))
                .map_err(|e| e.to_string());
            assert_eq!(answer, &alone, "request {index}");
        }
        let (_, long_answer) = answers.iter().find(|(i, _)| *i == 0).unwrap();
        assert_eq!(
            *streamed.lock().unwrap(),
            long_answer.as_ref().unwrap().choices[0]
        );
        answers
    }

    /// Requests with shorter and longer prompts (the batch then moves right), a sampled one
    /// with two choices and one too long for the model join a running request; when the first
    /// of them is answered, one more joins. Each answer is the request's answer alone, the
    /// joined ones come back before the long one ends, and the one too long is refused alone.
    #[test]
    fn requests_joining_a_running_batch_get_the_answers_they_get_alone() {
        for preset in ["tiny-llama", "tiny-mistral"] {
            let (model, dir) = random_model(&format!("join-{preset}"), preset, 11);
            let joining = [
                ask(
                    "hello world hello world hello world hello world hello world",
                    12,
                ),
                ask("world", 30),
                GenerationRequest {
                    temperature: 0.7,
                    n: 2,
                    seed: 5,
                    ..ask("world hello", 25)
                },
                ask(&"hello ".repeat(3000), 5),
            ];
            let late = ask("hello hello world", 7);
            let answers = join_and_compare(&model, &ask("hello", 40), &joining, &late);
            let tokens = |index: usize| {
                let (_, answer) = answers.iter().find(|(i, _)| *i == index).unwrap();
                answer.as_ref().unwrap().completion_tokens
            };
            assert_eq!(
                [0, 1, 2, 5].map(tokens),
                [40, 12, 30, 7],
                "{preset}: the answers end at their budgets"
            );
            let order: Vec<usize> = answers.iter().map(|(i, _)| *i).collect();
            let position = |index: usize| order.iter().position(|&i| i == index).unwrap();
            assert!(
                position(1) < position(0) && position(5) < position(0),
                "{preset}: joined requests answered before the long one ends: {order:?}"
            );
            let (_, refused) = answers.iter().find(|(i, _)| *i == 4).unwrap();
            assert!(
                refused.as_ref().unwrap_err().contains("context"),
                "{preset}: {refused:?}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Requests the batch answers without decoding them in it: one with more choices than
    /// its rows (decoded alone, in chunks), one with no tokens to generate, one with no
    /// choices; each gets its answer alone.
    #[test]
    fn requests_the_batch_cannot_hold_or_need_not_decode_get_their_answers_alone() {
        let (model, dir) = random_model("join-edges", "tiny-llama", 17);
        let requests = [
            GenerationRequest {
                temperature: 0.9,
                n: 3,
                seed: 2,
                ..ask("hello world", 6)
            },
            ask("world", 0),
            GenerationRequest {
                n: 0,
                ..ask("hello", 4)
            },
        ];
        let answers: Answers = Arc::default();
        let (arrivals, receiver) = mpsc::channel();
        for (i, request) in requests.iter().enumerate() {
            arrivals.send(arrival(i, request, &answers, None)).unwrap();
        }
        drop(arrivals);
        model.decode_arrivals(&receiver, 2).unwrap();
        let answers = answers.lock().unwrap();
        assert_eq!(answers.len(), requests.len());
        for (index, answer) in answers.iter() {
            let alone = model
                .generate(std::slice::from_ref(&requests[*index]))
                .map(|mut outputs| outputs.remove(0))
                .map_err(|e| e.to_string());
            assert_eq!(answer, &alone, "request {index}");
        }
        let choices: Vec<usize> = answers
            .iter()
            .map(|(_, a)| a.as_ref().unwrap().choices.len())
            .collect();
        assert_eq!(choices, [3, 1, 0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A request whose prompt is over a bucket of slots longer than the running one's joins
    /// and leaves: the batch drops the padding every row then has, and a request joining after
    /// that still gets its answer alone, as does the running one.
    #[test]
    fn padding_every_row_has_is_dropped_and_the_answers_stay_their_own() {
        let (model, dir) = random_model("join-trim", "tiny-llama", 13);
        let wide = ask(&"hello world ".repeat(60), 2);
        let answers = join_and_compare(&model, &ask("hello", 30), &[wide], &ask("world", 6));
        let counts: Vec<u32> = answers
            .iter()
            .map(|(_, a)| a.as_ref().unwrap().completion_tokens)
            .collect();
        assert_eq!(counts, [2, 6, 30]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
