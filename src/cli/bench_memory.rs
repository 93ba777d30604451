//! The peak memory of one pass (or, with `--train`, of one whole training step: forward, loss,
//! backward and the parameters' gradients, not the in-place SGD update), as `octconv bench` reports
//! it: activations plus kernel scratch, and the layer at which it peaks.
//!
//! Definitions, chosen so that the figure of an α does not depend on what ran before it in the
//! process, nor on how rayon happened to schedule the kernels' tasks (tested in
//! `tests/bench_cli.rs`):
//! - **scratch**: kernel working memory (column matrices, Winograd tiles) is kept in per-thread
//!   pools across passes. It is reported as the most scratch one kernel task of this α asks for,
//!   times the number of threads: what the pools hold once every thread has served the largest
//!   task. The pools are emptied before each α, so an α is never charged for another's scratch.
//!   (The bytes the pools really hold vary from run to run by up to ±25 % with scheduling: which
//!   thread serves which task, and tasks that start inside another's GEMM.)
//! - **activations**: the highest heap growth (counted by the binary's allocator,
//!   [`super::alloc`]) during one pass, less the growth of the scratch pools in that pass. Two
//!   untimed passes run first, so one-time allocations of the process (gemm's per-thread packing
//!   buffers, rayon's workers) and this α's pools exist before it is measured.
//! - **peak** = activations + scratch; **layer**: the layer during which the activations peak.

use super::alloc;
use candle_core::Tensor;
use octconv_runtime::kernels::scratch;
use octconv_runtime::OctModel;

/// The peak of one pass.
#[derive(Clone, Debug, Default)]
pub struct PeakMemory {
    /// The activations' peak, in bytes (with `--train`, of the whole step: what the backward keeps,
    /// the gradients and the transients).
    pub activations: u64,
    /// Kernel scratch, in bytes (see the module docs).
    pub scratch: u64,
    /// The layer during which the activations peak (its IR name; for a training step, which
    /// layer's forward or backward, or the loss).
    pub layer: String,
}

impl PeakMemory {
    /// Activations plus scratch.
    pub fn total(&self) -> u64 {
        self.activations + self.scratch
    }
}

/// Measures one training step of `net` on `x` with `loss`: the planned step where it runs
/// ([`octconv_runtime::tape::planned`]), else forward and candle's backward. The activations' part
/// is the heap's highest growth during the whole step (forward, backward and the parameters'
/// gradients, which the step returns), less the scratch pools' growth; scratch as in [`measure`].
/// `layer` names the layer whose forward or backward the planned step's peak falls in.
pub fn measure_train_step(
    net: &OctModel,
    x: &Tensor,
    loss: &(dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Sync),
) -> anyhow::Result<PeakMemory> {
    use octconv_runtime::model::StepPoint;
    let planned = octconv_runtime::tape::planned(net.device());
    let step = |at: &mut (dyn FnMut(StepPoint) + Send)| -> candle_core::Result<()> {
        if planned {
            drop(net.train_step_observed(x, loss, at)?);
        } else {
            drop(loss(&candle_core::ModuleT::forward_t(net, x, true)?)?.backward()?);
        }
        Ok(())
    };
    scratch::release_pools();
    for _ in 0..2 {
        step(&mut |_| ())?;
    }
    let scratch_before = scratch::scratch_bytes();
    let base = alloc::current();
    alloc::reset_peak();
    let (mut activations, mut at_peak, mut last) = (0u64, None, None);
    let mut observe = |point: Option<StepPoint>| {
        let grown = scratch::scratch_bytes().saturating_sub(scratch_before);
        let peak = alloc::peak().saturating_sub(base).saturating_sub(grown) as u64;
        if peak > activations {
            activations = peak;
            at_peak = last;
        }
        last = point;
        alloc::reset_peak();
    };
    step(&mut |p| observe(Some(p)))?;
    observe(None);
    let name = |j: usize| net.ir().layers.get(j).map_or("?", |l| l.name.as_str());
    let layer = match (planned, at_peak) {
        (false, _) => "(training step, autograd)".to_string(),
        (true, Some(StepPoint::Forward(j))) => format!("forward {}", name(j)),
        (true, Some(StepPoint::Backward(j))) => format!("backward {}", name(j)),
        (true, Some(StepPoint::Loss)) => "the loss".to_string(),
        (true, _) => "(training step, planned)".to_string(),
    };
    Ok(PeakMemory {
        activations,
        scratch: (scratch::largest_task_bytes() * rayon::current_num_threads()) as u64,
        layer,
    })
}

/// Measures one pass of `net` on `x` (inference, or the training-mode forward with `train`).
pub fn measure(net: &OctModel, x: &Tensor, train: bool) -> anyhow::Result<PeakMemory> {
    scratch::release_pools();
    for _ in 0..2 {
        drop(net.run_observed(x, train, &mut |_| ())?);
    }
    let scratch_before = scratch::scratch_bytes();
    let base = alloc::current();
    alloc::reset_peak();
    let mut activations = 0u64;
    let mut layer = None;
    let out = net.run_observed(x, train, &mut |j| {
        let grown = scratch::scratch_bytes().saturating_sub(scratch_before);
        let peak = alloc::peak().saturating_sub(base).saturating_sub(grown) as u64;
        if j > 0 && peak > activations {
            activations = peak;
            layer = Some(j - 1);
        }
        alloc::reset_peak();
    })?;
    drop(out);
    Ok(PeakMemory {
        activations,
        scratch: (scratch::largest_task_bytes() * rayon::current_num_threads()) as u64,
        layer: layer
            .and_then(|j| net.ir().layers.get(j))
            .map_or_else(String::new, |l| l.name.clone()),
    })
}
