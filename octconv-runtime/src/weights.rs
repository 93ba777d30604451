//! Weight files: safetensors checked against the model's parameter list (every problem named), and
//! written atomically so an interrupted write never leaves a truncated file in place.

use candle_core::{DType, Device, Tensor};
use octconv_spec::params::model_params;
use octconv_spec::Model;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// Everything wrong with a set of weights for a model.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsError {
    /// One line per problem, each naming the tensor.
    pub problems: Vec<String>,
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the weights do not fit the model ({} problem(s)):",
            self.problems.len()
        )?;
        for p in self.problems.iter().take(20) {
            writeln!(f, "  - {p}")?;
        }
        if self.problems.len() > 20 {
            writeln!(f, "  - … and {} more", self.problems.len() - 20)?;
        }
        Ok(())
    }
}

impl std::error::Error for WeightsError {}

/// Checks that `tensors` has exactly the model's parameters with the right shapes and dtype `f32`.
pub fn check_weights(model: &Model, tensors: &HashMap<String, Tensor>) -> Result<(), WeightsError> {
    let mut problems = Vec::new();
    let params = model_params(model);
    for p in &params {
        match tensors.get(&p.name) {
            None => problems.push(format!("missing tensor `{}` (shape {:?})", p.name, p.shape)),
            Some(t) if t.dims() != p.shape.as_slice() => problems.push(format!(
                "tensor `{}` has shape {:?}, the model needs {:?}",
                p.name,
                t.dims(),
                p.shape
            )),
            Some(t) if t.dtype() != DType::F32 => problems.push(format!(
                "tensor `{}` has dtype {:?}, expected f32",
                p.name,
                t.dtype()
            )),
            _ => {}
        }
    }
    // `__…` tensors are run metadata (normalisation, optimiser state), not parameters.
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !k.starts_with("__") && !params.iter().any(|p| &p.name == *k))
        .collect();
    extra.sort();
    for k in extra {
        problems.push(format!(
            "unexpected tensor `{k}`: the model has no such parameter (weights of another spec?)"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(WeightsError { problems })
    }
}

/// Reads a safetensors file.
pub fn read_safetensors(path: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .map_err(|e| anyhow::anyhow!("cannot read safetensors file `{}`: {e}", path.display()))
}

/// Writes `tensors` to `path` atomically: to a temporary file in the same directory, then renamed
/// over `path`, so a crash never leaves a truncated file and an existing one stays intact on error.
pub fn write_safetensors_atomic(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> anyhow::Result<()> {
    write_atomic(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp)
            .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", tmp.display()))
    })
}

/// Writes `bytes` to `path` atomically, like [`write_safetensors_atomic`].
pub fn write_bytes_atomic(bytes: &[u8], path: &Path) -> anyhow::Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes)
            .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", tmp.display()))
    })
}

/// Runs `write` on a temporary path next to `path`, then renames it into place (removing it if
/// either step fails).
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("`{}` is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!(
            "cannot move the new file into place at `{}`: {e}",
            path.display()
        )
    })
}
