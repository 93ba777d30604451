//! The builtin model library: `specs/*.oct`, compiled in.

/// `(name, source)` of every builtin spec file.
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    ("wrn", include_str!("../../specs/wrn.oct")),
    ("resnet", include_str!("../../specs/resnet.oct")),
    ("mobilenet_v1", include_str!("../../specs/mobilenet_v1.oct")),
    ("mobilenet_v2", include_str!("../../specs/mobilenet_v2.oct")),
    ("resnext", include_str!("../../specs/resnext.oct")),
    ("se_resnet", include_str!("../../specs/se_resnet.oct")),
    ("densenet", include_str!("../../specs/densenet.oct")),
    ("unet", include_str!("../../specs/unet.oct")),
    ("seed_wrn", include_str!("../../specs/seed_wrn.oct")),
];

/// The source of builtin file `name` (`"wrn"`, `"wrn.oct"`).
pub fn builtin_source(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix(".oct").unwrap_or(name);
    BUILTIN_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}
