//! The spec arguments shared by every subcommand: `SPEC [--model NAME] [--set name=value]…`.

use octconv_spec::{check, CheckRequest, Checked, Model, SpecInput};

/// Which model to use.
#[derive(clap::Args, Debug, Clone)]
pub struct SpecArgs {
    /// A `.oct` file or a builtin call such as 'wrn(n = 4, k = 10, alpha = 0.25)'.
    pub spec: String,
    /// The model to use when a file defines several (a name or a call such as 'tiny(c = 16)').
    #[arg(long)]
    pub model: Option<String>,
    /// Override a model parameter, e.g. --set alpha=0.5 (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
}

impl SpecArgs {
    /// Checks the spec; diagnostics go to stderr.
    pub fn check(&self, color: bool) -> Checked {
        let checked = check(&CheckRequest {
            spec: SpecInput::from_arg(&self.spec),
            model: self.model.as_deref(),
            sets: &self.sets,
        });
        if !checked.diagnostics.is_empty() {
            eprint!("{}", checked.render_diagnostics(color));
        }
        checked
    }

    /// One checked model per value of the spec's `alpha` parameter (`--alphas` of `bench` and
    /// `sweep`), all checked before any work starts; `None` (diagnostics printed) if one is invalid.
    pub fn models_for_alphas(
        &self,
        alphas: &[f64],
        color: bool,
    ) -> anyhow::Result<Option<Vec<(f64, Model)>>> {
        if alphas.is_empty() {
            anyhow::bail!("--alphas needs at least one value");
        }
        if self
            .sets
            .iter()
            .any(|s| s.trim_start().starts_with("alpha"))
        {
            anyhow::bail!(
                "`--set alpha=…` conflicts with --alphas; list the values in --alphas instead"
            );
        }
        let mut models = Vec::new();
        for &a in alphas {
            let mut spec = self.clone();
            spec.sets.push(format!("alpha={a}"));
            let Some(model) = spec.model(color) else {
                eprintln!(
                    "(while setting alpha = {a} for --alphas; the spec needs an `alpha` parameter)"
                );
                return Ok(None);
            };
            models.push((a, model));
        }
        Ok(Some(models))
    }

    /// The checked model, or `None` (diagnostics already printed) if the spec is invalid.
    pub fn model(&self, color: bool) -> Option<Model> {
        let checked = self.check(color);
        if checked.ok() {
            checked.model
        } else {
            None
        }
    }
}

/// `--device cpu|cuda|cuda:N`, shared by the subcommands that compute.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArgs {
    /// Opens the device, or explains why it cannot.
    pub fn open(&self) -> anyhow::Result<candle_core::Device> {
        octconv_runtime::device::parse_device(&self.device)
    }
}

/// Loads `data` (e.g. `folder:DIR`), applies the limits, and fits its images to `model`'s input
/// (folders are resized to it; decoded sets must have its shape).
pub fn load_data(
    model: &Model,
    data: &str,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> anyhow::Result<octconv_runtime::data::Split> {
    use anyhow::Context;
    let src: octconv_runtime::data::DataSource = data.parse()?;
    let mut split = src.load().with_context(|| format!("loading `{data}`"))?;
    if let Some(n) = train_limit {
        split.train.truncate(n);
    }
    if let Some(n) = test_limit {
        split.test.truncate(n);
    }
    let d = model.input;
    split
        .fit_to([d.c, d.h, d.w])
        .with_context(|| format!("model `{}` and data `{data}`", model.name))?;
    Ok(split)
}

/// Checks that `model` classifies `data`: its output is a vector of one score per class.
pub fn check_classification(
    model: &Model,
    data: &octconv_runtime::data::Split,
    source: &str,
) -> anyhow::Result<()> {
    let classes = data.train.classes.len();
    if model.output != (octconv_spec::Shape::Flat { features: classes }) {
        anyhow::bail!("model `{}` outputs {} but `{source}` has {classes} classes (set e.g. `--set classes={classes}`)", model.name, model.output);
    }
    Ok(())
}

/// Checks that `model` scores segmentation `data`: its output is a map `[K, H, W]` of the input's
/// size (masks are resized to the input) with at least `classes` channels (default `K`), and no mask
/// holds an index of `classes` or more. Returns `K`.
pub fn check_segmentation(
    model: &Model,
    data: &mut octconv_runtime::data::Split,
    classes: Option<usize>,
) -> anyhow::Result<usize> {
    let input = model.input;
    let octconv_spec::Shape::Single(out) = model.output else {
        anyhow::bail!(
            "model `{}` outputs {}, but segmentation needs one map of class scores [classes, {}, {}] (end the spec with `merge()` and a 1×1 `conv(classes)`)",
            model.name,
            model.output,
            input.h,
            input.w
        );
    };
    if (out.h, out.w) != (input.h, input.w) {
        anyhow::bail!(
            "model `{}` outputs a {}×{} map, but masks are resized with the image to its input, {}×{}: the output map must have the input's size",
            model.name,
            out.h,
            out.w,
            input.h,
            input.w
        );
    }
    let classes = classes.unwrap_or(out.c);
    if out.c < classes {
        anyhow::bail!(
            "model `{}` scores {} classes but there are {classes} (--classes): it needs one output channel per class (e.g. `--set classes={classes}`)",
            model.name,
            out.c
        );
    }
    data.set_classes(classes)?;
    // Metrics count every output channel: a prediction of an extra channel is a wrong pixel.
    data.set_classes(out.c)?;
    Ok(out.c)
}

/// Errors if `path` exists and `force` is off: outputs never replace a user's file silently.
pub fn refuse_overwrite(path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        anyhow::bail!("`{}` exists; pass --force to overwrite it", path.display());
    }
    Ok(())
}
