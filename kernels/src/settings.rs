//! How the kernels run, as one value: worker threads, thread pinning, the f32 and int8 kernels,
//! the int8 activation width and whether attention runs in int8.
//!
//! A program sets them once, before the first kernel call, with [`configure`]; without that every
//! kernel uses [`KernelSettings::default`] (all CPUs, the best kernels this CPU supports, 8-bit
//! activations, f32 attention). The library never reads the environment: the binaries read the
//! documented variables at their edge with [`KernelSettings::from_env`] and pass the value in,
//! so a library user (a test, another program) decides in code.
//!
//! The settings are process-wide because the worker pool and the packed weight layouts are: a
//! pool cannot change its size once started, and an int8 layer's activation width is fixed when
//! it is packed. [`configure`] therefore refuses a change once any kernel has read them.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use crate::{ActivationRange, F32Kernel, Int8Kernel};

/// The environment variables [`KernelSettings::from_env`] reads, with what each sets.
pub const ENV_VARS: [(&str, &str); 6] = [
    (
        "ECHOJEPA_THREADS",
        "worker threads (a positive integer; default: the CPUs the process may use)",
    ),
    (
        "ECHOJEPA_PIN_THREADS",
        "1 pins worker i to the i-th allowed CPU (Linux; default 0)",
    ),
    (
        "ECHOJEPA_KERNEL_F32",
        "f32 kernel: scalar, avx2 or avx512 (default: the best this CPU runs)",
    ),
    (
        "ECHOJEPA_KERNEL_INT8",
        "int8 kernel: scalar, avx2, avxvnni, avx512vnni, amx or neon-dot (default: the best)",
    ),
    (
        "ECHOJEPA_INT8_ACTIVATIONS",
        "int8 layers' activation width: u8 or u7 (default u8)",
    ),
    (
        "ECHOJEPA_INT8_ATTENTION",
        "attention's two products in int8: u8, u7 or off (default off)",
    ),
];

/// The [`ENV_VARS`] as a help section for a binary's `--help`.
pub fn env_help() -> String {
    let mut s = String::from("Kernel settings (environment, read once at start):\n");
    for (k, what) in ENV_VARS {
        s.push_str(&format!("  {k:<26} {what}\n"));
    }
    s
}

/// How the kernels run. Build one with [`Default`] and the `with_*` methods, or from the
/// environment with [`KernelSettings::from_env`], and install it with [`configure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelSettings {
    /// Worker threads; `None` means every CPU the process may use.
    pub threads: Option<NonZeroUsize>,
    /// Pin worker `i` to the `i`-th CPU the process may use (Linux). Off by default: on a
    /// machine shared with other busy processes pinning can only hurt.
    pub pin_threads: bool,
    /// The f32 kernel; `None` means the best this CPU supports.
    pub f32_kernel: Option<F32Kernel>,
    /// The int8 kernel; `None` means the best this CPU supports.
    pub int8_kernel: Option<Int8Kernel>,
    /// Activation width of int8 layers packed without an explicit one.
    pub int8_activations: ActivationRange,
    /// Attention's two products in int8 with these activations, or f32 (`None`).
    pub int8_attention: Option<ActivationRange>,
}

/// Settings that cannot be used: a bad environment value, a kernel this CPU cannot run, or a
/// change after the kernels started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// An environment variable holds a value that means nothing.
    #[error("{var}={value:?} is not valid: {expected}")]
    BadValue {
        /// The variable.
        var: &'static str,
        /// What it holds.
        value: String,
        /// What it may hold.
        expected: &'static str,
    },
    /// The requested kernel is not supported by this CPU.
    #[error("{what} kernel `{name}` does not run on this CPU (available: {available})")]
    Unsupported {
        /// `f32` or `int8`.
        what: &'static str,
        /// The kernel asked for.
        name: &'static str,
        /// The kernels this CPU runs.
        available: String,
    },
    /// The kernels already run with other settings.
    #[error(
        "the kernels already run with other settings ({current:?}); configure them once, \
         before the first model is loaded"
    )]
    AlreadySet {
        /// The settings in force.
        current: KernelSettings,
    },
}

impl KernelSettings {
    /// The same settings with `n` worker threads (`0` means every CPU).
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = NonZeroUsize::new(n);
        self
    }

    /// The thread count a program asks for: `flag` if given, else the one already set (from
    /// `ECHOJEPA_THREADS`), else `default_threads` (`0`: every CPU).
    pub fn with_thread_choice(self, flag: Option<usize>, default_threads: usize) -> Self {
        match (flag, self.threads) {
            (Some(t), _) => self.with_threads(t),
            (None, Some(_)) => self,
            (None, None) => self.with_threads(default_threads),
        }
    }

    /// The same settings with int8 layers' activations in `range`.
    pub fn with_int8_activations(mut self, range: ActivationRange) -> Self {
        self.int8_activations = range;
        self
    }

    /// The same settings with attention in int8 (`Some`) or f32 (`None`).
    pub fn with_int8_attention(mut self, range: Option<ActivationRange>) -> Self {
        self.int8_attention = range;
        self
    }

    /// Reads the variables listed in [`ENV_VARS`]; unset or empty ones keep the default. For
    /// binaries, at their edge: a library takes a [`KernelSettings`] instead.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let var = |k: &'static str| get(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v));
        let mut s = Self::default();
        if let Some((k, v)) = var("ECHOJEPA_THREADS") {
            s.threads = Some(
                v.trim()
                    .parse()
                    .map_err(|_| bad(k, &v, "a positive integer"))?,
            );
        }
        if let Some((k, v)) = var("ECHOJEPA_PIN_THREADS") {
            s.pin_threads = match v.trim() {
                "1" => true,
                "0" => false,
                _ => return Err(bad(k, &v, "0 or 1")),
            };
        }
        if let Some((k, v)) = var("ECHOJEPA_KERNEL_F32") {
            let all = [F32Kernel::Scalar, F32Kernel::Avx2Fma, F32Kernel::Avx512];
            let found = all.into_iter().find(|x| x.name() == v.trim());
            s.f32_kernel = Some(found.ok_or_else(|| bad(k, &v, "scalar, avx2 or avx512"))?);
        }
        if let Some((k, v)) = var("ECHOJEPA_KERNEL_INT8") {
            let all = [
                Int8Kernel::Scalar,
                Int8Kernel::Avx2,
                Int8Kernel::AvxVnni,
                Int8Kernel::Avx512Vnni,
                Int8Kernel::Amx,
                Int8Kernel::NeonDot,
            ];
            let found = all.into_iter().find(|x| x.name() == v.trim());
            s.int8_kernel =
                Some(found.ok_or_else(|| {
                    bad(k, &v, "scalar, avx2, avxvnni, avx512vnni, amx or neon-dot")
                })?);
        }
        if let Some((k, v)) = var("ECHOJEPA_INT8_ACTIVATIONS") {
            s.int8_activations = range(v.trim()).ok_or_else(|| bad(k, &v, "u8 or u7"))?;
        }
        if let Some((k, v)) = var("ECHOJEPA_INT8_ATTENTION") {
            s.int8_attention = match v.trim() {
                "off" => None,
                other => Some(range(other).ok_or_else(|| bad(k, &v, "u8, u7 or off"))?),
            };
        }
        Ok(s)
    }

    /// Checks that this CPU runs the kernels named here.
    pub fn check(&self) -> Result<(), SettingsError> {
        if let Some(k) = self.f32_kernel
            && !k.is_supported()
        {
            return Err(SettingsError::Unsupported {
                what: "f32",
                name: k.name(),
                available: names(F32Kernel::available().iter().map(|k| k.name())),
            });
        }
        if let Some(k) = self.int8_kernel
            && !k.is_supported()
        {
            return Err(SettingsError::Unsupported {
                what: "int8",
                name: k.name(),
                available: names(Int8Kernel::available().iter().map(|k| k.name())),
            });
        }
        Ok(())
    }
}

fn bad(var: &'static str, value: &str, expected: &'static str) -> SettingsError {
    SettingsError::BadValue {
        var,
        value: value.to_string(),
        expected,
    }
}

fn range(v: &str) -> Option<ActivationRange> {
    match v {
        "u8" => Some(ActivationRange::U8),
        "u7" => Some(ActivationRange::U7),
        _ => None,
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(", ")
}

static SETTINGS: OnceLock<KernelSettings> = OnceLock::new();

/// Installs the settings for this process. Call it once, before the first kernel runs; a second
/// call with the same settings is accepted, a different one is refused (the pool and packed
/// layers already follow the first).
pub fn configure(settings: KernelSettings) -> Result<(), SettingsError> {
    settings.check()?;
    let current = *SETTINGS.get_or_init(|| settings);
    if current == settings {
        Ok(())
    } else {
        Err(SettingsError::AlreadySet { current })
    }
}

/// A program's start: the [`ENV_VARS`], with the thread count from `threads` (a command-line
/// flag) if given, else `ECHOJEPA_THREADS`, else `default_threads` (`0`: every CPU), installed
/// with [`configure`]. Returns what was installed. Only binaries call this; libraries take a
/// [`KernelSettings`].
pub fn configure_from_env(
    threads: Option<usize>,
    default_threads: usize,
) -> Result<KernelSettings, SettingsError> {
    let settings = KernelSettings::from_env()?.with_thread_choice(threads, default_threads);
    configure(settings)?;
    Ok(settings)
}

/// The settings in force: those given to [`configure`], else the defaults (fixed from the
/// first call on).
pub fn current() -> &'static KernelSettings {
    SETTINGS.get_or_init(KernelSettings::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<KernelSettings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KernelSettings::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn the_environment_maps_onto_the_settings() {
        assert_eq!(from(&[]).unwrap(), KernelSettings::default());
        let s = from(&[
            ("ECHOJEPA_THREADS", "3"),
            ("ECHOJEPA_PIN_THREADS", "1"),
            ("ECHOJEPA_KERNEL_F32", "scalar"),
            ("ECHOJEPA_KERNEL_INT8", "scalar"),
            ("ECHOJEPA_INT8_ACTIVATIONS", "u7"),
            ("ECHOJEPA_INT8_ATTENTION", "u8"),
        ])
        .unwrap();
        assert_eq!(s.threads.map(NonZeroUsize::get), Some(3));
        assert!(s.pin_threads);
        assert_eq!(s.f32_kernel, Some(F32Kernel::Scalar));
        assert_eq!(s.int8_kernel, Some(Int8Kernel::Scalar));
        assert_eq!(s.int8_activations, ActivationRange::U7);
        assert_eq!(s.int8_attention, Some(ActivationRange::U8));
        assert!(s.check().is_ok(), "scalar kernels run everywhere");
        let off = from(&[
            ("ECHOJEPA_INT8_ATTENTION", "off"),
            ("ECHOJEPA_THREADS", " "),
        ]);
        assert_eq!(off.unwrap(), KernelSettings::default());
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_it_may_hold() {
        for (k, v, expected) in [
            ("ECHOJEPA_THREADS", "0", "positive integer"),
            ("ECHOJEPA_THREADS", "two", "positive integer"),
            ("ECHOJEPA_PIN_THREADS", "yes", "0 or 1"),
            ("ECHOJEPA_KERNEL_F32", "avx9", "avx2 or avx512"),
            ("ECHOJEPA_INT8_ACTIVATIONS", "u6", "u8 or u7"),
            ("ECHOJEPA_INT8_ATTENTION", "on", "u8, u7 or off"),
        ] {
            let e = from(&[(k, v)]).unwrap_err().to_string();
            assert!(
                e.contains(k) && e.contains(v) && e.contains(expected),
                "{e}"
            );
        }
    }

    #[test]
    fn configure_accepts_the_settings_in_force_and_refuses_a_change() {
        let now = *current();
        assert_eq!(configure(now), Ok(()));
        let other = now.with_threads(now.threads.map_or(1, |n| n.get() + 1));
        let e = configure(other).unwrap_err();
        assert_eq!(e, SettingsError::AlreadySet { current: now });
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_default() {
        let env = from(&[("ECHOJEPA_THREADS", "3")]).unwrap();
        let n = |s: KernelSettings| s.threads.map(NonZeroUsize::get);
        assert_eq!(n(env.with_thread_choice(Some(5), 2)), Some(5));
        assert_eq!(n(env.with_thread_choice(None, 2)), Some(3));
        assert_eq!(
            n(KernelSettings::default().with_thread_choice(None, 2)),
            Some(2)
        );
        assert_eq!(
            n(KernelSettings::default().with_thread_choice(None, 0)),
            None
        );
    }

    #[test]
    fn builders_set_one_field_each() {
        let s = KernelSettings::default()
            .with_threads(2)
            .with_int8_activations(ActivationRange::U7)
            .with_int8_attention(Some(ActivationRange::U7));
        assert_eq!(s.threads.map(NonZeroUsize::get), Some(2));
        assert_eq!(s.int8_activations, ActivationRange::U7);
        assert_eq!(s.int8_attention, Some(ActivationRange::U7));
        assert_eq!(KernelSettings::default().with_threads(0).threads, None);
    }
}
