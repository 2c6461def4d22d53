//! Helper threads that share the CPU matmuls with the calling thread and stay awake between
//! them.
//!
//! A decode step runs about 120 matmuls with a little serial work between each (norms, RoPE,
//! attention, a few tens of microseconds). Rayon's idle workers fall asleep within that gap, and
//! waking one costs tens of microseconds on a virtual machine, so the projections of a step
//! took nearly twice as long in place as back to back (measured in `docs/design.md`). The
//! helpers here spin (with the CPU's pause hint) for [`SPIN_BEFORE_PARK`] after their last
//! job before they park, so every matmul of a decode finds them awake, and an idle process
//! costs no CPU.
//!
//! [`broadcast`] runs one closure on the calling thread and on every helper that is free to
//! join; the closure shares its work out itself (an atomic counter of row chunks), so a helper
//! that joins late, or not at all, only means the others take more chunks.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it parks.
pub const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);

/// A job as the helpers see it: the caller's closure with its lifetime erased. The caller keeps
/// the closure alive until no helper can reach it (see [`broadcast`]).
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn() + Sync));

// SAFETY: the closure behind the pointer is `Sync`, so calling it from other threads is sound;
// its lifetime is handled by `broadcast`.
unsafe impl Send for JobRef {}

/// What the caller and the helpers share.
struct Shared {
    /// The current job, or `None` once its caller has stopped taking helpers in.
    job: Mutex<Option<JobRef>>,
    /// Bumped for every job, so a helper sees a new one while it spins.
    epoch: AtomicU64,
    /// Helpers inside the current job's closure.
    running: AtomicUsize,
    /// The first panic of a helper in the current job, for the caller to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

struct Pool {
    /// Held by the thread whose job the pool runs; others run theirs without helpers.
    owner: Mutex<()>,
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
}

/// The pool: `rayon::current_num_threads() - 1` helpers (so `RAYON_NUM_THREADS` sizes it
/// too), started on first use.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            epoch: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        let helpers = (1..rayon::current_num_threads())
            .filter_map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("drpo-matmul-{i}"))
                    .spawn(move || help(&shared))
                    .ok()
                    .map(|handle| handle.thread().clone())
            })
            .collect();
        Pool {
            owner: Mutex::new(()),
            shared,
            helpers,
        }
    })
}

/// Runs `work` on this thread and on every helper free to join, and returns once all of them
/// are done with it. `work` must share the job out itself and finish it when it runs alone.
///
/// When another thread's job holds the pool, `work` runs on rayon's threads instead.
/// A panic in any copy of `work` is resumed here, after every copy has stopped.
pub fn broadcast(work: &(dyn Fn() + Sync)) {
    let pool = pool();
    let _owner = match pool.owner.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => {
            rayon::broadcast(|_| work());
            return;
        }
    };
    let shared = &pool.shared;
    // SAFETY: the lifetime is erased only while `Retire` (below) has not run, and `Retire`
    // withdraws the job and waits until no helper runs it, on return and on unwinding alike.
    let job = JobRef(unsafe {
        std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync + 'static)>(
            work,
        )
    });
    *lock(&shared.job) = Some(job);
    shared.epoch.fetch_add(1, Ordering::Release);
    for helper in &pool.helpers {
        helper.unpark();
    }

    struct Retire<'a>(&'a Shared);
    impl Drop for Retire<'_> {
        fn drop(&mut self) {
            // No helper joins after this; those that did are waited for.
            *lock(&self.0.job) = None;
            while self.0.running.load(Ordering::Acquire) > 0 {
                std::hint::spin_loop();
            }
        }
    }
    let retire = Retire(shared);
    work();
    drop(retire);
    if let Some(panic) = lock(&shared.panic).take() {
        resume_unwind(panic);
    }
}

/// Calls `f(state, index, item)` for every item of `items`, shared out between this thread and
/// the helpers (see [`broadcast`]); each thread that takes part makes its `state` (scratch
/// space) with `init` once. One item runs here without waking the helpers.
pub fn for_each_mut<T: Send, S>(
    items: &mut [T],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut T) + Sync,
) {
    if let [item] = items {
        return f(&mut init(), 0, item);
    }
    let count = items.len();
    let next = AtomicUsize::new(0);
    let base = ItemsPtr(items.as_mut_ptr());
    broadcast(&|| {
        let base = &base;
        let mut state = None;
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= count {
                break;
            }
            let state = state.get_or_insert_with(&init);
            // SAFETY: each index below `count` is taken once, so no two threads reach the same
            // item, and `items` stays borrowed mutably until `broadcast` returns.
            let item = unsafe { &mut *base.0.add(index) };
            f(state, index, item);
        }
    });
}

/// The items of [`for_each_mut`], reached from several threads, each item from one.
struct ItemsPtr<T>(*mut T);

// SAFETY: the items are `Send` and each is used by one thread at a time (see `for_each_mut`).
unsafe impl<T: Send> Sync for ItemsPtr<T> {}

/// A helper's life: wait for a job (spinning, then parked), run it, repeat.
fn help(shared: &Shared) {
    let mut seen = 0;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            spins = spins.wrapping_add(1);
            // Reading the clock every pause would slow the wake-up; every 256th is enough.
            if spins.is_multiple_of(256) && idle_since.elapsed() > SPIN_BEFORE_PARK {
                // `unpark` after a new epoch wakes this, or makes it return at once.
                std::thread::park();
                idle_since = Instant::now();
            } else {
                std::hint::spin_loop();
            }
        }
        let job = {
            let job = lock(&shared.job);
            if job.is_some() {
                shared.running.fetch_add(1, Ordering::AcqRel);
            }
            *job
        };
        let Some(JobRef(work)) = job else {
            continue;
        };
        // SAFETY: `running` counts this helper, so the caller keeps `work` alive until the
        // decrement below.
        let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*work)() }));
        if let Err(panic) = result {
            lock(&shared.panic).get_or_insert(panic);
        }
        shared.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Locks `mutex`, whose data stays consistent even if a holder panicked (each critical section
/// is a single store or take).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums `0..count` with chunks taken from a shared counter, as the matmul does.
    fn shared_sum(count: usize) -> usize {
        let next = AtomicUsize::new(0);
        let total = AtomicUsize::new(0);
        broadcast(&|| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                total.fetch_add(i, Ordering::Relaxed);
            }
        });
        total.into_inner()
    }

    #[test]
    fn every_chunk_runs_once_also_from_several_threads_at_once() {
        let want = |count: usize| count * (count - 1) / 2;
        assert_eq!(shared_sum(10_000), want(10_000));
        // Concurrent callers: one holds the pool, the others run on rayon's threads.
        std::thread::scope(|s| {
            for count in [1000, 2000, 3000, 4000] {
                s.spawn(move || {
                    for _ in 0..50 {
                        assert_eq!(shared_sum(count), want(count));
                    }
                });
            }
        });
    }

    #[test]
    fn for_each_mut_visits_every_item_once_with_its_index() {
        for count in [0, 1, 2, 1000] {
            let mut items = vec![0usize; count];
            let inits = AtomicUsize::new(0);
            let init = || inits.fetch_add(1, Ordering::Relaxed);
            for_each_mut(&mut items, init, |_, index, item| *item += index + 1);
            assert_eq!(items, (1..=count).collect::<Vec<_>>());
            assert!(inits.into_inner() <= rayon::current_num_threads().max(1));
        }
    }

    #[test]
    fn a_helper_parks_when_idle_and_wakes_for_the_next_job() {
        assert_eq!(shared_sum(100), 4950);
        std::thread::sleep(SPIN_BEFORE_PARK * 5);
        assert_eq!(shared_sum(100), 4950);
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller_and_the_pool_keeps_working() {
        let calls = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            broadcast(&|| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first copy fails");
                }
            })
        }));
        assert!(result.is_err());
        assert_eq!(shared_sum(1000), 499_500);
    }
}
