//! The Llama-family decoder, generic over the burn backend.
//!
//! One block is `x + attn(rms_norm(x))` then `x + mlp(rms_norm(x))`, with:
//! - RoPE in Hugging Face's layout (`rotate_half`: the two halves of each head are the pairs),
//!   base frequency `rope_theta`;
//! - grouped-query attention: each key/value head serves `heads / kv_heads` query heads. The
//!   query heads of one group are folded into the query-length axis, so one batched matmul
//!   covers a group and the KV cache is never repeated in memory;
//! - Qwen2's biases on the query, key and value projections;
//! - Mistral's sliding window: a query attends to the keys at most `sliding_window - 1`
//!   positions behind it (Hugging Face's convention);
//! - a SwiGLU MLP: `down(silu(gate(x)) * up(x))`;
//! - an output head that is either its own matrix or the embedding's (tied).
//!
//! Dense weights are stored in checkpoint layout `[out, in]`, a projection being `x @ wᵀ`: one
//! contiguous row per output feature is what the CUDA decode kernel reads, and a tied output
//! head is the embedding table itself. Quantized weights may instead stay packed in host
//! memory ([`Linear::Packed`], CPU only), several times fewer bytes to read per token. The
//! query/key/value and the gate/up projections are fused into one matrix each (fewer, larger
//! kernels per token).
//!
//! The decoder knows no file format: loaders (`crate::load`) turn files into [`Weights`], and
//! [`Llama::new`] takes them with the [`KernelOptions`] its forward passes run with.
//!
//! Batches are left-padded: row `b` of a batch starts at slot `pad[b]` of the KV cache, its
//! position ids start at 0 there, and the padding slots are masked out of every attention.
//! RMSNorm statistics and the attention softmax run in `f32` whatever the storage type, as
//! `transformers` does, so bf16 models stay close to their f32 reference.

use std::cell::OnceCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{
    DType, Distribution, Element, FloatDType, Int, Tensor, TensorData, activation, backend::Backend,
};

use crate::config::LlamaConfig;
use crate::device::upload;
use crate::kernel_options::KernelOptions;
use crate::packed::PackedMatrix;

/// Additive mask value: large enough to zero a probability, finite so that no NaN can appear.
const MASKED: f32 = -1.0e9;

/// Attention reads the cache in spans of a multiple of this many slots (the slots past the
/// filled ones are masked), so the key length, and with it the kernels' shapes, autotune keys
/// and fused graphs, changes once every this many decode steps instead of every step.
pub const KV_BUCKET: usize = 64;

/// How a decoder's weight matrices are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    /// Dequantized to the backend's float type, on the device (any backend).
    Dequantized,
    /// Kept in their quantized blocks in host memory and multiplied on the CPU (see
    /// [`crate::packed`]): for the CPU backend, where it is several times faster.
    Packed,
}

/// One decoder block's weights.
#[derive(Debug, Clone)]
pub struct Block<B: Backend> {
    /// RMSNorm weight before attention, `[hidden]`.
    pub attn_norm: Tensor<B, 1>,
    /// Fused query, key and value projection, `hidden → (heads + 2 * kv_heads) * head_dim`.
    pub wqkv: Linear<B>,
    /// Bias of the fused query, key and value projection, `[(heads + 2 * kv_heads) * head_dim]`
    /// (Qwen2 has one; Llama does not).
    pub qkv_bias: Option<Tensor<B, 1>>,
    /// Output projection, `heads * head_dim → hidden`.
    pub wo: Linear<B>,
    /// RMSNorm weight before the MLP, `[hidden]`.
    pub mlp_norm: Tensor<B, 1>,
    /// Fused gate and up projection, `hidden → 2 * intermediate` (gate first).
    pub w_gate_up: Linear<B>,
    /// Down projection, `intermediate → hidden`.
    pub w_down: Linear<B>,
}

/// The weights of one projection.
#[derive(Debug, Clone)]
pub enum Linear<B: Backend> {
    /// `[out, in]` on the device.
    Dense(Tensor<B, 2>),
    /// `[out, in]` quantized rows in host memory, multiplied on the CPU.
    Packed(Arc<PackedMatrix>),
}

impl<B: Backend> Linear<B> {
    /// Bytes the weights take (what one matrix-vector product reads).
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(w) => w.shape().num_elements() * w.dtype().size(),
            Self::Packed(w) => w.bytes(),
        }
    }

    /// Gives device weights plain row-major strides (see [`dense`]).
    fn make_dense(&mut self) {
        if let Self::Dense(w) = self {
            *w = dense(w.clone());
        }
    }

    /// A projection from checkpoint rows `[out, in]`, held as `storage` says.
    pub fn from_rows(rows: PackedMatrix, storage: WeightStorage, device: &B::Device) -> Self {
        match storage {
            WeightStorage::Packed => Self::Packed(Arc::new(rows)),
            WeightStorage::Dequantized => {
                let shape = [rows.rows(), rows.cols()];
                Self::Dense(upload(rows.to_f32(), shape, device))
            }
        }
    }
}

/// A token embedding table, `[vocab, hidden]`.
#[derive(Debug, Clone)]
pub enum Embedding<B: Backend> {
    /// On the device.
    Dense(Tensor<B, 2>),
    /// Quantized rows in host memory, dequantized as they are looked up.
    Packed(Arc<PackedMatrix>),
}

impl<B: Backend> Embedding<B> {
    /// A table from its rows, held as `storage` says.
    pub fn from_rows(rows: PackedMatrix, storage: WeightStorage, device: &B::Device) -> Self {
        match storage {
            WeightStorage::Packed => Self::Packed(Arc::new(rows)),
            WeightStorage::Dequantized => {
                let shape = [rows.rows(), rows.cols()];
                Self::Dense(upload(rows.to_f32(), shape, device))
            }
        }
    }

    /// The vectors of `tokens` (`[batch, len]`), `[batch, len, hidden]`.
    fn lookup(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            Self::Dense(table) => burn::tensor::module::embedding(table.clone(), tokens),
            Self::Packed(table) => {
                let [batch, len] = tokens.dims();
                let device = tokens.device();
                let ids = tokens
                    .into_data()
                    .convert::<i64>()
                    .into_vec::<i64>()
                    .expect("token ids convert to i64");
                let values = ids
                    .into_iter()
                    .flat_map(|id| table.row(id as usize))
                    .collect();
                upload(values, [batch, len, table.cols()], &device)
            }
        }
    }
}

/// All weights of a decoder, already on the device.
#[derive(Debug, Clone)]
pub struct Weights<B: Backend> {
    /// Token embedding, `[vocab, hidden]`.
    pub embed: Embedding<B>,
    /// The decoder blocks, in order.
    pub blocks: Vec<Block<B>>,
    /// Final RMSNorm weight, `[hidden]`.
    pub norm: Tensor<B, 1>,
    /// Output head, `hidden → vocab` (the embedding's rows when tied).
    pub lm_head: Linear<B>,
}

/// A Llama-family decoder on one device.
#[derive(Debug, Clone)]
pub struct Llama<B: Backend> {
    config: LlamaConfig,
    weights: Weights<B>,
    /// RoPE tables, `[positions, head_dim]`, in the storage type (as `transformers` casts them).
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    device: B::Device,
    /// The kernels every forward pass runs with.
    kernels: KernelOptions,
}

/// The per-layer key/value cache of one batch, on the device.
///
/// Slots `0..len` are filled; each layer holds `[batch, kv_heads, capacity, head_dim]` and is
/// written in place, so a decode step costs no copy of the past.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    pads: Vec<usize>,
    /// `pads` on the device, for the fused CUDA attention's masks.
    pad_ids: Tensor<B, 1, Int>,
    len: usize,
    capacity: usize,
    /// Allocated slots: `capacity` rounded up to a multiple of [`KV_BUCKET`].
    slots: usize,
    /// Whether forward passes prefill prompts whose positions must come out the same however
    /// the prompt is cut into passes (see [`KvCache::set_prefilling`]).
    prefilling: bool,
    /// Counts the positions each layer of a forward pass has been given (see
    /// [`KvCache::count_layers_into`]).
    layer_positions: Option<Arc<AtomicU64>>,
}

impl<B: Backend> KvCache<B> {
    /// Number of filled slots (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots allocated.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Left padding of each row.
    pub fn pads(&self) -> &[usize] {
        &self.pads
    }

    /// Marks the passes that follow as prefill passes whose positions must not depend on how
    /// a prompt is cut into passes (the prefix cache computes a prompt's head and tail in
    /// separate passes): on the CPU every such pass then attends with the same arithmetic,
    /// burn's, where the fused attention would otherwise take passes of up to 16 positions.
    /// Decoding after a prefill unmarks it.
    pub fn set_prefilling(&mut self, prefilling: bool) {
        self.prefilling = prefilling;
    }

    /// Adds to `counter`, as each layer of a prefill pass on this cache (see
    /// [`Self::set_prefilling`]) is issued, the positions it computes (rows times length): a
    /// long prefill's progress, layer by layer. On a backend that queues its work (CUDA) the
    /// count runs ahead of the device.
    pub fn count_layers_into(&mut self, counter: Arc<AtomicU64>) {
        self.layer_positions = Some(counter);
    }

    /// Row `row`'s keys and values in `slots`, every layer, copied to the host.
    pub fn read(&self, row: usize, slots: std::ops::Range<usize>) -> SlotValues {
        let [_, kv, _, hd] = self.layers[0].0.dims();
        let read = |t: &Tensor<B, 4>| {
            t.clone()
                .slice([row..row + 1, 0..kv, slots.clone(), 0..hd])
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("cache values convert to f32")
        };
        SlotValues::new(
            slots.len(),
            [kv, hd],
            self.layers
                .iter()
                .map(|(k, v)| (read(k), read(v)))
                .collect(),
        )
    }

    /// Keeps only the rows `keep` (indices of this cache's rows, ascending), which become rows
    /// `0..keep.len()` in that order: rows that are done decoding leave the batch, and a step
    /// then computes only the others. Each kept row's values are unchanged, and a row's results
    /// do not depend on the other rows of its batch.
    pub fn keep_rows(&mut self, keep: &[usize]) {
        let device = self.pad_ids.device();
        let index = int_vector(keep, &device);
        for (k, v) in &mut self.layers {
            *k = dense(k.clone().select(0, index.clone()));
            *v = dense(v.clone().select(0, index.clone()));
        }
        self.pads = keep.iter().map(|&r| self.pads[r]).collect();
        self.pad_ids = int_vector(&self.pads, &device);
    }

    /// Moves every row's filled slots `shift` slots later (positive: more left padding, so that
    /// rows with longer prompts can join) or earlier (negative: drops padding that every row
    /// has), into slots allocated for `capacity`. Each row's values and positions are
    /// unchanged, and a row's results do not depend on its padding.
    ///
    /// # Panics
    /// If a row would lose filled slots, or the filled slots would not fit `capacity`.
    pub fn relocate(&mut self, shift: isize, capacity: usize) {
        let moved = |at: usize| at.checked_add_signed(shift);
        let len = moved(self.len).expect("no filled slot moves before the first");
        assert!(
            self.pads.iter().all(|&pad| moved(pad).is_some()) && len <= capacity,
            "relocating the cache by {shift} would drop filled slots or overflow {capacity}"
        );
        let slots = capacity.div_ceil(KV_BUCKET).max(1) * KV_BUCKET;
        let (from, to) = if shift >= 0 {
            (0..self.len, len - self.len..len)
        } else {
            (self.len - len..self.len, 0..len)
        };
        for side in self.layers.iter_mut().flat_map(|(k, v)| [k, v]) {
            let [rows, kv, _, hd] = side.dims();
            let mut moved = dense(Tensor::zeros([rows, kv, slots, hd], &side.device()));
            let values = side.clone().slice([0..rows, 0..kv, from.clone(), 0..hd]);
            write_slots(&mut moved, [0..rows, 0..kv, to.clone(), 0..hd], values);
            *side = moved;
        }
        let device = self.pad_ids.device();
        self.pads = self
            .pads
            .iter()
            .map(|&pad| moved(pad).expect("checked"))
            .collect();
        self.pad_ids = int_vector(&self.pads, &device);
        self.len = len;
        self.capacity = capacity;
        self.slots = slots;
    }

    /// One cache of the rows of `parts`: `parts[i].0` lists the rows (of the result) that
    /// `parts[i].1`'s rows become, in order; together they name every row once. Every part
    /// must hold the same slots, filled to the same length.
    pub fn merge(parts: Vec<(Vec<usize>, KvCache<B>)>) -> KvCache<B> {
        let placed: Vec<usize> = parts.iter().flat_map(|(rows, _)| rows.clone()).collect();
        let (len, capacity, slots) = {
            let first = &parts[0].1;
            (first.len, first.capacity, first.slots)
        };
        assert!(
            parts
                .iter()
                .all(|(_, c)| (c.len, c.capacity, c.slots) == (len, capacity, slots)),
            "merged caches differ in their slots"
        );
        let device = parts[0].1.pad_ids.device();
        let gather = in_row_order(&placed, &device);
        let mut pads = vec![0; placed.len()];
        for (rows, part) in &parts {
            for (&row, &pad) in rows.iter().zip(&part.pads) {
                pads[row] = pad;
            }
        }
        let layers = (0..parts[0].1.layers.len())
            .map(|l| {
                // `keys`: the layer's keys, else its values.
                let side = |keys: bool| {
                    let rows = parts.iter().map(|(_, p)| {
                        let (k, v) = &p.layers[l];
                        if keys { k.clone() } else { v.clone() }
                    });
                    dense(Tensor::cat(rows.collect(), 0).select(0, gather.clone()))
                };
                (side(true), side(false))
            })
            .collect();
        KvCache {
            layers,
            pad_ids: int_vector(&pads, &device),
            pads,
            len,
            capacity,
            slots,
            prefilling: false,
            layer_positions: None,
        }
    }
}

/// `values` as a 1-D integer tensor: row indices for `select`, or the pads the attention reads.
pub fn int_vector<B: Backend>(values: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let ints = values.iter().map(|&v| v as i32).collect();
    Tensor::from_data(TensorData::new(ints, [values.len()]), device)
}

/// The indices that put rows concatenated in the order `placed` (the result row each becomes)
/// back in result order, for `select` on the row axis.
pub fn in_row_order<B: Backend>(placed: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let mut source = vec![0; placed.len()];
    for (j, &row) in placed.iter().enumerate() {
        source[row] = j;
    }
    int_vector(&source, device)
}

/// The keys and values of consecutive slots of one row of a [`KvCache`], every layer, in f32
/// on the host: what the prefix cache (`crate::prefix_cache`) keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotValues {
    len: usize,
    /// Key/value heads and the head dimension.
    heads: [usize; 2],
    /// Each layer's keys and values, each `[kv_heads, len, head_dim]` row-major.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl SlotValues {
    /// Values of `len` slots of `[kv_heads, head_dim]` heads, from each layer's keys and values
    /// (`[kv_heads, len, head_dim]` row-major).
    pub fn new(len: usize, heads: [usize; 2], layers: Vec<(Vec<f32>, Vec<f32>)>) -> Self {
        Self { len, heads, layers }
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots `range` of `parts` laid end to end (values of one model).
    pub fn join(parts: &[&SlotValues], range: std::ops::Range<usize>) -> SlotValues {
        let total: usize = parts.iter().map(|p| p.len).sum();
        assert!(range.end <= total, "slots {range:?} asked of {total}");
        let Some(first) = parts.first() else {
            return SlotValues::new(0, [0, 0], Vec::new());
        };
        let [kv_heads, hd] = first.heads;
        // `keys`: the layer's keys, else its values.
        let side = |layer: usize, keys: bool| {
            let mut out = Vec::with_capacity(kv_heads * range.len() * hd);
            // Head-major, as the cache: every slot of head h, then head h + 1's.
            for h in 0..kv_heads {
                let mut at = 0;
                for part in parts {
                    let (from, to) = (range.start.max(at), range.end.min(at + part.len));
                    if from < to {
                        let (k, v) = &part.layers[layer];
                        let head = &(if keys { k } else { v })[h * part.len * hd..];
                        out.extend_from_slice(&head[(from - at) * hd..(to - at) * hd]);
                    }
                    at += part.len;
                }
            }
            out
        };
        SlotValues {
            len: range.len(),
            heads: first.heads,
            layers: (0..first.layers.len())
                .map(|l| (side(l, true), side(l, false)))
                .collect(),
        }
    }
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position of each row (generation).
    Last,
    /// Every position (tests against a reference implementation).
    All,
}

impl<B: Backend> Llama<B> {
    /// Builds a decoder from weights already on `device`, to run with `kernels`.
    pub fn new(
        config: LlamaConfig,
        mut weights: Weights<B>,
        device: &B::Device,
        kernels: KernelOptions,
    ) -> Self {
        let (cos, sin) = rope_tables::<B>(&config, device);
        for block in &mut weights.blocks {
            for linear in [
                &mut block.wqkv,
                &mut block.wo,
                &mut block.w_gate_up,
                &mut block.w_down,
            ] {
                linear.make_dense();
            }
        }
        weights.lm_head.make_dense();
        Self {
            config,
            weights,
            cos,
            sin,
            device: device.clone(),
            kernels,
        }
    }

    /// A decoder with random weights of the configured shapes, made directly on the device
    /// (for speed measurements with true shapes: no file is written or read).
    ///
    /// Projections are drawn with standard deviation `1/sqrt(fan_in)` so activations stay of
    /// order one through the depth of the model.
    pub fn random(
        config: LlamaConfig,
        device: &B::Device,
        seed: u64,
        kernels: KernelOptions,
    ) -> Self {
        B::seed(device, seed);
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (h, kv, i) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size);
        let linear = |fan_in: usize, fan_out: usize| {
            let std = 1.0 / (fan_in as f64).sqrt();
            Linear::Dense(Tensor::<B, 2>::random(
                [fan_out, fan_in],
                Distribution::Normal(0.0, std),
                device,
            ))
        };
        let blocks = (0..c.num_hidden_layers)
            .map(|_| Block {
                attn_norm: Tensor::ones([d], device),
                wqkv: linear(d, (h + 2 * kv) * hd),
                qkv_bias: c
                    .qkv_bias()
                    .then(|| Tensor::zeros([(h + 2 * kv) * hd], device)),
                wo: linear(h * hd, d),
                mlp_norm: Tensor::ones([d], device),
                w_gate_up: linear(d, 2 * i),
                w_down: linear(i, d),
            })
            .collect();
        let embed = Tensor::random([c.vocab_size, d], Distribution::Normal(0.0, 1.0), device);
        let weights = Weights {
            lm_head: linear(d, c.vocab_size),
            embed: Embedding::Dense(embed),
            blocks,
            norm: Tensor::ones([d], device),
        };
        Self::new(config, weights, device, kernels)
    }

    /// Bytes of weights read to decode one token: every projection and the output head (the
    /// embedding is only gathered from).
    pub fn weight_bytes(&self) -> usize {
        let blocks: usize = self
            .weights
            .blocks
            .iter()
            .map(|b| b.wqkv.bytes() + b.wo.bytes() + b.w_gate_up.bytes() + b.w_down.bytes())
            .sum();
        blocks + self.weights.lm_head.bytes()
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The kernels the forward passes run with.
    pub fn kernels(&self) -> &KernelOptions {
        &self.kernels
    }

    /// An empty cache for `pads.len()` rows and up to `capacity` slots; `pads[b]` is the number
    /// of padding tokens at the left of row `b`'s prompt.
    pub fn new_cache(&self, pads: &[usize], capacity: usize) -> KvCache<B> {
        let c = &self.config;
        let slots = capacity.div_ceil(KV_BUCKET).max(1) * KV_BUCKET;
        let shape = [pads.len(), c.kv_heads(), slots, c.head_dim()];
        let layers = (0..c.num_hidden_layers)
            .map(|_| {
                (
                    dense(Tensor::zeros(shape, &self.device)),
                    dense(Tensor::zeros(shape, &self.device)),
                )
            })
            .collect();
        KvCache {
            layers,
            pads: pads.to_vec(),
            pad_ids: int_vector(pads, &self.device),
            len: 0,
            capacity,
            slots,
            prefilling: false,
            layer_positions: None,
        }
    }

    /// [`Self::new_cache`] with the first slots of each row's prompt already filled from
    /// `prefixes[b]` (the keys and values of row `b`'s first prompt tokens, laid end to end):
    /// as many slots as every row can take, so the cache holds `min(pads[b] + prefix length)`
    /// slots, and the next forward pass starts there. A row's slots beyond that are computed
    /// again by that pass.
    pub fn new_cache_with(
        &self,
        pads: &[usize],
        capacity: usize,
        prefixes: &[Vec<std::sync::Arc<SlotValues>>],
    ) -> KvCache<B> {
        let mut cache = self.new_cache(pads, capacity);
        let prefix_len =
            |parts: &[std::sync::Arc<SlotValues>]| -> usize { parts.iter().map(|p| p.len()).sum() };
        let filled = pads
            .iter()
            .zip(prefixes)
            .map(|(pad, parts)| pad + prefix_len(parts))
            .min()
            .unwrap_or(0);
        let (kv, hd) = (self.config.kv_heads(), self.config.head_dim());
        for (row, (&pad, parts)) in pads.iter().zip(prefixes).enumerate() {
            let count = filled.saturating_sub(pad);
            if count == 0 {
                continue;
            }
            let parts: Vec<&SlotValues> = parts.iter().map(|p| &**p).collect();
            let values = SlotValues::join(&parts, 0..count);
            let slots = [row..row + 1, 0..kv, pad..pad + count, 0..hd];
            for ((k_cache, v_cache), (k, v)) in cache.layers.iter_mut().zip(values.layers) {
                let shape = [1, kv, count, hd];
                write_slots(k_cache, slots.clone(), upload(k, shape, &self.device));
                write_slots(v_cache, slots.clone(), upload(v, shape, &self.device));
            }
        }
        cache.len = filled;
        cache
    }

    /// Runs `tokens` (`[batch, len]`, appended after what `cache` holds) through the model and
    /// returns logits `[batch, 1 or len, vocab]` in the storage type.
    ///
    /// # Panics
    /// If the cache would overflow its capacity or the RoPE table: callers size both from the
    /// request (prompt plus `max_tokens`), so this is a programming error, not a user error.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        logits: Logits,
    ) -> Tensor<B, 3> {
        let [batch, len] = tokens.dims();
        let start = cache.len;
        let end = start + len;
        assert!(
            end <= cache.capacity,
            "KV cache overflow: {end} slots needed, {} allocated",
            cache.capacity
        );
        assert_eq!(
            batch,
            cache.pads.len(),
            "batch size differs from the cache's"
        );

        let (cos, sin) = self.rope_for(&cache.pads, start, len);
        let window = self.attention_window(&cache.pads, start, len, cache.slots, cache.prefilling);

        let eps = self.config.rms_norm_eps;
        let kernels = &self.kernels;
        // The residual stream `x` and the last block's MLP output, not yet added to it.
        let mut x = self.weights.embed.lookup(tokens);
        let mut branch = None;
        let pad_ids = &cache.pad_ids;
        for (block, (k_cache, v_cache)) in self.weights.blocks.iter().zip(cache.layers.iter_mut()) {
            let (sum, h) = add_rms_norm(x, branch.take(), &block.attn_norm, eps, kernels);
            let caches = (k_cache, v_cache, pad_ids);
            let h = self.attention(h, block, caches, &cos, &sin, &window);
            let (sum, h) = add_rms_norm(sum, Some(h), &block.mlp_norm, eps, kernels);
            x = sum;
            branch = Some(mlp(h, block, kernels));
            if cache.prefilling
                && let Some(counter) = &cache.layer_positions
            {
                counter.fetch_add((batch * len) as u64, Ordering::Relaxed);
            }
        }
        cache.len = end;

        let last = |t: Tensor<B, 3>| match logits {
            Logits::Last => t.slice([0..batch, len - 1..len]),
            Logits::All => t,
        };
        let (_, x) = add_rms_norm(last(x), branch.map(last), &self.weights.norm, eps, kernels);
        let [b, t, d] = x.dims();
        project(x.reshape([b * t, d]), &self.weights.lm_head, kernels).reshape([
            b,
            t,
            self.config.vocab_size,
        ])
    }

    /// RoPE cosines and sines for the new slots, `[batch, len, 1, head_dim]`.
    fn rope_for(&self, pads: &[usize], start: usize, len: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let positions: Vec<i32> = pads
            .iter()
            .flat_map(|&pad| (start..start + len).map(move |slot| slot.saturating_sub(pad) as i32))
            .collect();
        let table_len = self.cos.dims()[0];
        assert!(
            positions.iter().all(|&p| (p as usize) < table_len),
            "position beyond the RoPE table ({table_len} positions)"
        );
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(positions, [pads.len() * len]),
            &self.device,
        );
        let hd = self.config.head_dim();
        let shape = [pads.len(), len, 1, hd];
        (
            self.cos.clone().select(0, ids.clone()).reshape(shape),
            self.sin.clone().select(0, ids).reshape(shape),
        )
    }

    /// Which cached slots the new queries may see: `keys` slots from `first`, a multiple of
    /// [`KV_BUCKET`] when the cache allows; `prefilling` is the cache's
    /// [`KvCache::set_prefilling`].
    fn attention_window<'p>(
        &self,
        pads: &'p [usize],
        start: usize,
        len: usize,
        slots: usize,
        prefilling: bool,
    ) -> Window<'p, B> {
        let end = start + len;
        // Keys older than the window of the first new query are never seen: skip them.
        let first = match self.config.sliding_window_in_use() {
            Some(w) => (start + 1).saturating_sub(w),
            None => 0,
        };
        let keys = (end - first).div_ceil(KV_BUCKET) * KV_BUCKET;
        let keys = keys.min(slots);
        let first = first.min(slots - keys);
        Window {
            first,
            keys,
            pads,
            start,
            len,
            prefilling,
            mask: OnceCell::new(),
        }
    }

    /// The additive mask `[batch, 1, 1, len, keys]` (f32) over `window`'s keys when some of
    /// them must be hidden from some queries (padding, the future, slots not filled yet,
    /// outside the sliding window), built on first use.
    fn window_mask<'w>(&self, window: &'w Window<'_, B>) -> Option<&'w Tensor<B, 5>> {
        window
            .mask
            .get_or_init(|| {
                let Window {
                    first,
                    keys,
                    pads,
                    start,
                    len,
                    ..
                } = *window;
                let end = start + len;
                // `cuda::attention`'s kernel applies the same rule on the device.
                let visible = |b: usize, q: usize, k: usize| {
                    // A padding query sees itself only, which keeps its row finite.
                    k == q
                        || (k <= q
                            && k >= pads[b]
                            && self
                                .config
                                .sliding_window_in_use()
                                .is_none_or(|w| q - k < w))
                };
                let span = first..first + keys;
                let needs_mask = (0..pads.len())
                    .any(|b| (start..end).any(|q| span.clone().any(|k| !visible(b, q, k))));
                needs_mask.then(|| {
                    let mut values = Vec::with_capacity(pads.len() * len * keys);
                    for b in 0..pads.len() {
                        for q in start..end {
                            values.extend(
                                span.clone()
                                    .map(|k| if visible(b, q, k) { 0.0 } else { MASKED }),
                            );
                        }
                    }
                    Tensor::<B, 5>::from_data(
                        TensorData::new(values, [pads.len(), 1, 1, len, keys]),
                        (&self.device, DType::F32),
                    )
                })
            })
            .as_ref()
    }

    /// One block's attention; `caches` are its key and value caches and the rows' padding on
    /// the device.
    fn attention(
        &self,
        x: Tensor<B, 3>,
        block: &Block<B>,
        caches: (&mut Tensor<B, 4>, &mut Tensor<B, 4>, &Tensor<B, 1, Int>),
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        window: &Window<'_, B>,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let [batch, len, d] = x.dims();
        let (h, kv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let group = h / kv;
        let start = window.start;
        let end = start + len;
        let (k_cache, v_cache, pad_ids) = caches;
        let kernels = &self.kernels;

        let qkv = project(x.reshape([batch * len, d]), &block.wqkv, kernels);
        let qkv = match &block.qkv_bias {
            Some(bias) => qkv + bias.clone().unsqueeze::<2>(),
            None => qkv,
        };
        #[cfg(feature = "cuda")]
        if let Some(attended) = crate::cuda::attention::rope_attention(
            &qkv,
            cos,
            sin,
            k_cache,
            v_cache,
            pad_ids,
            h,
            kv,
            window.first,
            window.keys,
            start,
            c.sliding_window_in_use(),
            kernels,
        ) {
            return project(attended, &block.wo, kernels).reshape([batch, len, d]);
        }
        // Query head `g * group + r` reads key/value head `g`: fold `r` into the rows.
        let fused =
            crate::cpu::rope_into_cache(&qkv, cos, sin, k_cache, v_cache, h, kv, start, kernels);
        #[cfg(feature = "cuda")]
        let fused = fused.or_else(|| {
            crate::cuda::rope::rope_into_cache(
                &qkv, cos, sin, k_cache, v_cache, h, kv, start, kernels,
            )
        });
        let q = match fused {
            Some(q) => q,
            None => {
                let split = |from: usize, heads: usize| {
                    qkv.clone()
                        .slice([0..batch * len, from * hd..(from + heads) * hd])
                        .reshape([batch, len, heads, hd])
                };
                let q = rope(split(0, h), cos, sin);
                let k = rope(split(h, kv), cos, sin).swap_dims(1, 2);
                let v = split(h + kv, kv).swap_dims(1, 2);
                let slots = [0..batch, 0..kv, start..end, 0..hd];
                write_slots(k_cache, slots.clone(), k);
                write_slots(v_cache, slots, v);
                q.swap_dims(1, 2).reshape([batch, kv, group * len, hd])
            }
        };
        let (first, keys) = (window.first, window.keys);
        let fused = if window.prefilling {
            None
        } else {
            crate::cpu::attention(
                &q,
                k_cache,
                v_cache,
                window.pads,
                len,
                first,
                keys,
                start,
                c.sliding_window_in_use(),
                kernels,
            )
        };
        #[cfg(feature = "cuda")]
        let fused = fused.or_else(|| {
            crate::cuda::attention::attention(
                &q,
                k_cache,
                v_cache,
                pad_ids,
                len,
                first,
                keys,
                start,
                c.sliding_window_in_use(),
                kernels,
            )
        });
        #[cfg(not(feature = "cuda"))]
        let _ = pad_ids;
        if let Some(attended) = fused {
            return project(attended, &block.wo, kernels).reshape([batch, len, d]);
        }
        let span = first..first + keys;
        let k = k_cache
            .clone()
            .slice([0..batch, 0..kv, span.clone(), 0..hd]);
        let v = v_cache.clone().slice([0..batch, 0..kv, span, 0..hd]);

        let dtype = q.dtype();
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .cast(FloatDType::F32)
            .mul_scalar(1.0 / (hd as f64).sqrt());
        let scores =
            match self.window_mask(window) {
                Some(mask) => (scores.reshape([batch, kv, group, len, keys]) + mask.clone())
                    .reshape([batch, kv, group * len, keys]),
                None => scores,
            };
        let probs = activation::softmax(scores, 3).cast(dtype);
        let attended = probs
            .matmul(v)
            .reshape([batch, h, len, hd])
            .swap_dims(1, 2)
            .reshape([batch * len, h * hd]);
        project(attended, &block.wo, kernels).reshape([batch, len, d])
    }
}

/// The key slots a forward pass attends to, and what decides which of them each query sees.
struct Window<'p, B: Backend> {
    first: usize,
    /// Slots read from `first` on.
    keys: usize,
    /// Left padding of each row (the cache's).
    pads: &'p [usize],
    /// The new queries' slots are `start..start + len`.
    start: usize,
    len: usize,
    /// The cache's [`KvCache::set_prefilling`].
    prefilling: bool,
    /// See [`Llama::window_mask`]; unused (never built) where the fused CUDA attention runs.
    mask: OnceCell<Option<Tensor<B, 5>>>,
}

/// `x · wᵀ`, a weight projection: packed weights are multiplied on the CPU; dense ones on the
/// device, where on CUDA the kernel depends on the row count (see [`crate::cuda::matmul`]).
fn project<B: Backend>(x: Tensor<B, 2>, w: &Linear<B>, kernels: &KernelOptions) -> Tensor<B, 2> {
    match w {
        Linear::Packed(w) => {
            let [rows, _] = x.dims();
            let device = x.device();
            let values = x
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("activations convert to f32");
            upload(w.matmul(&values, rows, kernels), [rows, w.rows()], &device)
        }
        #[cfg(feature = "cuda")]
        Linear::Dense(w) => crate::cuda::matmul::project(x, w, kernels),
        #[cfg(not(feature = "cuda"))]
        Linear::Dense(w) => x.matmul(w.clone().transpose()),
    }
}

/// Writes `values` into `cache[slots]` in place: the cache is taken out of its slot for the
/// write (a one-element placeholder stands in; no zero-sized allocation, which not every
/// backend takes), so the backend holds its only handle and need not copy the cache.
fn write_slots<B: Backend>(
    cache: &mut Tensor<B, 4>,
    slots: [std::ops::Range<usize>; 4],
    values: Tensor<B, 4>,
) {
    let empty = Tensor::empty([1, 1, 1, 1], &cache.device());
    *cache = std::mem::replace(cache, empty).slice_assign(slots, values);
}

/// `t` with plain row-major strides: on CUDA, burn may pad the rows of new tensors, and the
/// decoder's own kernels (`crate::cuda`) read weights and caches as dense rows.
pub fn dense<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    return crate::cuda::dense(t);
    #[cfg(not(feature = "cuda"))]
    t
}

/// `(x + branch, rms_norm(x + branch))` (without `branch`: `(x, rms_norm(x))`): the residual
/// add and the norm after it, one kernel on CUDA.
fn add_rms_norm<B: Backend>(
    x: Tensor<B, 3>,
    branch: Option<Tensor<B, 3>>,
    weight: &Tensor<B, 1>,
    eps: f64,
    kernels: &KernelOptions,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    #[cfg(feature = "cuda")]
    if let Some(fused) = crate::cuda::norm::add_rms_norm(&x, branch.as_ref(), weight, eps, kernels)
    {
        return fused;
    }
    if let Some(fused) = crate::cpu::add_rms_norm(&x, branch.as_ref(), weight, eps, kernels) {
        return fused;
    }
    let x = match branch {
        Some(branch) => x + branch,
        None => x,
    };
    (x.clone(), rms_norm(x, weight, eps))
}

/// `x / rms(x) * weight`, the statistic in f32 (as `transformers` computes it).
fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(2)
        .add_scalar(eps)
        .sqrt()
        .recip();
    (x * inv_rms).cast(dtype) * weight.clone().unsqueeze::<3>()
}

/// Rotary embedding in the `rotate_half` layout: `x * cos + rotate_half(x) * sin`.
fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, t, h, hd] = x.dims();
    let half = hd / 2;
    let x1 = x.clone().slice([0..b, 0..t, 0..h, 0..half]);
    let x2 = x.clone().slice([0..b, 0..t, 0..h, half..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// `silu(gate) * up` in one pass where the backend has a fused operation for it, else `None`.
fn fused_swiglu<B: Backend>(
    gate_up: &Tensor<B, 2>,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    if let Some(inner) = crate::cuda::swiglu::swiglu(gate_up, kernels) {
        return Some(inner);
    }
    crate::cpu::swiglu(gate_up, kernels)
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
fn mlp<B: Backend>(x: Tensor<B, 3>, block: &Block<B>, kernels: &KernelOptions) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let x = x.reshape([b * t, d]);
    let inner = gated_projection(&x, &block.w_gate_up, kernels).unwrap_or_else(|| {
        let gate_up = project(x, &block.w_gate_up, kernels);
        fused_swiglu(&gate_up, kernels).unwrap_or_else(|| {
            let inner = gate_up.dims()[1] / 2;
            let gate = gate_up.clone().slice([0..b * t, 0..inner]);
            let up = gate_up.slice([0..b * t, inner..2 * inner]);
            activation::silu(gate) * up
        })
    });
    project(inner, &block.w_down, kernels).reshape([b, t, d])
}

/// `silu(gate) * up` of `x`'s gate/up projection in one pass where the backend has a kernel for
/// it (CUDA, decode steps of few sequences), else `None`.
fn gated_projection<B: Backend>(
    x: &Tensor<B, 2>,
    w_gate_up: &Linear<B>,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    if let Linear::Dense(w) = w_gate_up {
        return crate::cuda::matmul::project_swiglu(x, w, kernels);
    }
    let _ = (x, w_gate_up, kernels);
    None
}

/// RoPE cosine and sine tables, computed as `transformers` does (f32 inverse frequencies,
/// f32 products), then stored in the backend's float type.
fn rope_tables<B: Backend>(
    config: &LlamaConfig,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let hd = config.head_dim();
    let positions = config.max_position_embeddings;
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions * hd);
    let mut sin = Vec::with_capacity(positions * hd);
    for p in 0..positions {
        // `rotate_half` pairs dimension i with i + hd/2, so the frequencies repeat once.
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let dtype = <B::FloatElem as Element>::dtype();
    let table = |values: Vec<f32>| {
        Tensor::<B, 2>::from_data(
            TensorData::new(values, [positions, hd]).convert_dtype(dtype),
            device,
        )
    };
    (table(cos), table(sin))
}
