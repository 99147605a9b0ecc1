//! Settings given in code decide how the kernels run. This file is its own test process, so the
//! process-wide settings installed here touch no other test.

use echojepa_kernels::settings::{self, SettingsError};
use echojepa_kernels::{ActivationRange, Int8Kernel, KernelSettings, PackedInt8Linear, pool};

#[test]
fn configured_settings_reach_the_pool_the_int8_layers_and_attention() {
    let wanted = KernelSettings::default()
        .with_threads(3)
        .with_int8_activations(ActivationRange::U7)
        .with_int8_attention(Some(ActivationRange::U8));
    let wanted = KernelSettings {
        int8_kernel: Some(Int8Kernel::Scalar),
        ..wanted
    };
    settings::configure(wanted).unwrap();
    assert_eq!(pool::num_threads(), 3);
    let w: Vec<f32> = (0..64 * 32)
        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
        .collect();
    let layer = PackedInt8Linear::from_f32(&w, 64, 32, None).unwrap();
    assert_eq!(layer.activations(), ActivationRange::U7);
    assert_eq!(layer.kernel(), Int8Kernel::Scalar);
    assert_eq!(
        ActivationRange::attention_configured(),
        Some(ActivationRange::U8)
    );
    assert_eq!(ActivationRange::configured(), ActivationRange::U7);
    // The pool has started: a different thread count is refused, the same settings are not.
    assert!(matches!(
        settings::configure(wanted.with_threads(2)),
        Err(SettingsError::AlreadySet { .. })
    ));
    assert_eq!(settings::configure(wanted), Ok(()));
    assert!(echojepa_kernels::cpu::describe().contains("3 threads"));
}
