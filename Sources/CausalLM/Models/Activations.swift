import CausalKernels

/// The precision of the activations in products with quantized weights, process-wide: `fp32` (the default; `fast`
/// logits equal `reference`'s bit for bit) or the opt-in `int8` path (faster; close to, not equal to, fp32 — see
/// docs/int8-activations.md). The CLI's `--activations` and the environment variable `CAUSAL_ACTIVATIONS` set it.
public enum Activations: String, Sendable, CaseIterable {
    case fp32, int8

    public static var current: Activations {
        get { ActivationPrecision.current == .int8 ? .int8 : .fp32 }
        set { ActivationPrecision.current = newValue == .int8 ? .int8 : .fp32 }
    }
}
