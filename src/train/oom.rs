//! Running out of device memory mid-run. On a GPU an allocation that does not fit comes back
//! as an error (on the CPU the process would abort instead), so a step that runs out can be
//! dropped, the weights as they were before it saved, and the run stopped with advice rather
//! than a bare driver message.

use std::fmt;

/// A training step that ran out of device memory.
#[derive(Debug)]
pub struct OutOfMemory {
    /// The step that was being computed (1-based, as steps are reported).
    pub step: usize,
    /// False when it ran out inside the optimizer update: some weights may have been updated
    /// and others not, so what is in memory must not be saved.
    pub consistent: bool,
    /// The error as the device reported it.
    pub detail: String,
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.consistent {
            "computing step"
        } else {
            "the optimizer update of step"
        };
        write!(
            f,
            "out of device memory in {place} {}: {}",
            self.step, self.detail
        )
    }
}

impl std::error::Error for OutOfMemory {}

/// Whether an error says the device ran out of memory: CUDA's driver and runtime errors
/// (`CUDA_ERROR_OUT_OF_MEMORY`, "out of memory") and cuBLAS's allocation failure, wherever in
/// the chain of contexts they are.
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    e.downcast_ref::<OutOfMemory>().is_some()
        || e.chain().any(|c| says_out_of_memory(&c.to_string()))
}

fn says_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out_of_memory")
        || m.contains("out of memory")
        || m.contains("cublas_status_alloc_failed")
}

/// The fault point of a step's forward and backward pass (see [`crate::fault`]).
pub const FAULT_STEP: &str = "oom-step";
/// The fault point of a step's optimizer update.
pub const FAULT_UPDATE: &str = "oom-update";

/// Fails as CUDA does when fault point `point` is armed.
pub fn injected(point: &str) -> anyhow::Result<()> {
    if crate::fault::hit(point) {
        anyhow::bail!(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\") (injected by {}={point})",
            crate::fault::ENV
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn device_messages_are_recognised_through_contexts() {
        let cuda: anyhow::Result<()> = Err(anyhow::anyhow!(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        ));
        let e = cuda.context("step 3").unwrap_err();
        assert!(is_out_of_memory(&e));
        assert!(is_out_of_memory(&anyhow::anyhow!(
            "cuda error: CUBLAS_STATUS_ALLOC_FAILED"
        )));
        assert!(is_out_of_memory(&anyhow::Error::new(OutOfMemory {
            step: 1,
            consistent: true,
            detail: "x".into(),
        })));
    }

    #[test]
    fn other_errors_are_not_out_of_memory() {
        assert!(!is_out_of_memory(&anyhow::anyhow!(
            "shape mismatch in matmul, lhs: [2, 3], rhs: [4, 5]"
        )));
        assert!(!is_out_of_memory(&anyhow::anyhow!(
            "cannot write metrics.jsonl: No space left on device"
        )));
    }

    #[test]
    fn the_message_says_where_it_ran_out() {
        let e = OutOfMemory {
            step: 7,
            consistent: false,
            detail: "CUDA_ERROR_OUT_OF_MEMORY".into(),
        };
        assert_eq!(
            e.to_string(),
            "out of device memory in the optimizer update of step 7: CUDA_ERROR_OUT_OF_MEMORY"
        );
    }

    #[test]
    fn unarmed_injection_passes() {
        assert!(injected("oom-nothing-armed").is_ok());
    }
}
