import Foundation
import CausalKernels
import CCausalKernels

// AdamW (Loshchilov & Hutter, https://arxiv.org/abs/1711.05101) as torch.optim.AdamW computes it, a learning-rate
// schedule (linear warmup, then cosine decay to zero, as transformers' get_cosine_schedule_with_warmup), gradient
// clipping by global norm (torch.nn.utils.clip_grad_norm_), and gradient accumulation over micro-batches.

/// A model's fp32 parameters (or gradients, or optimizer moments) as one flat buffer of tensors: what the optimizer,
/// clipping and the gradient norm work on (`LlamaParameters`, `T5Parameters`).
public protocol FlatParameters: AnyObject {
    var data: UnsafeMutablePointer<Float> { get }
    var count: Int { get }
    /// Each tensor's place in `data` and whether AdamW's weight decay applies to it.
    var decaySegments: [(offset: Int, count: Int, decays: Bool)] { get }
    /// Zeros of the same layout.
    func zeroBuffer() -> any FlatParameters
}

extension FlatParameters {
    /// Global L2 norm (double accumulation).
    public func norm() -> Double { ck_train_sum_squares(data, Int64(count)).squareRoot() }

    /// Largest |a - b| over all elements.
    public func maxAbsDifference(_ other: any FlatParameters) -> Float {
        precondition(other.count == count, "parameter layouts differ")
        var m: Float = 0
        for i in 0..<count { m = max(m, abs(data[i] - other.data[i])) }
        return m
    }
}

extension LlamaParameters: FlatParameters {
    public var decaySegments: [(offset: Int, count: Int, decays: Bool)] { tensors.map { ($0.offset, $0.count, $0.decays) } }
    public func zeroBuffer() -> any FlatParameters { zerosLike() }
}

/// AdamW with decoupled weight decay; matrices decay, norm weights do not.
public final class AdamW {
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    /// Updates taken so far (torch's `step`; bias correction uses step + 1 for the next update).
    public var step: Int
    /// First and second moments, in the parameters' layout.
    public let m: any FlatParameters
    public let v: any FlatParameters
    public let pool: ThreadPool

    public init(parameters: any FlatParameters, beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8,
                weightDecay: Double = 0, pool: ThreadPool = .shared) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
        self.step = 0
        m = parameters.zeroBuffer()
        v = parameters.zeroBuffer()
        self.pool = pool
    }

    /// One update of `parameters` with `gradients` at learning rate `lr`.
    public func update(_ parameters: any FlatParameters, gradients: any FlatParameters, lr: Double) {
        precondition(parameters.count == m.count && gradients.count == m.count, "parameter layouts differ")
        step += 1
        // Scalars in double, rounded once to float (as torch passes Python floats to fp32 kernels).
        let bc1 = 1 - pow(beta1, Double(step)), bc2 = 1 - pow(beta2, Double(step))
        let omb1 = Float(1 - beta1), b2 = Float(beta2), omb2 = Float(1 - beta2), e = Float(eps)
        let stepSize = Float(lr / bc1), bc2Sqrt = Float(bc2.squareRoot())
        let decay = Float(1 - lr * weightDecay)
        // Work items: each tensor in chunks of at most 1 << 18 elements.
        var items: [(offset: Int, count: Int, decay: Float)] = []
        for t in parameters.decaySegments {
            var o = 0
            while o < t.count {
                let c = min(1 << 18, t.count - o)
                items.append((t.offset + o, c, t.decays ? decay : 1))
                o += c
            }
        }
        let p = parameters.data, g = gradients.data, mp = m.data, vp = v.data
        pool.parallelFor(items.count) { i in
            let it = items[i]
            ck_train_adamw(p + it.offset, g + it.offset, mp + it.offset, vp + it.offset, Int64(it.count), it.decay, omb1, b2,
                           omb2, stepSize, bc2Sqrt, e)
        }
    }
}

/// The learning rate at each optimizer step (0-based): linear warmup from 0 over `warmupSteps`, then a cosine decay
/// from `peak` to 0 at `totalSteps` (transformers' get_cosine_schedule_with_warmup).
public struct LearningRateSchedule: Sendable, Equatable {
    public var peak: Double
    public var warmupSteps: Int
    public var totalSteps: Int

    public init(peak: Double, warmupSteps: Int = 0, totalSteps: Int) {
        self.peak = peak; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
    }

    public func lr(at step: Int) -> Double {
        if step < warmupSteps { return peak * Double(step) / Double(max(1, warmupSteps)) }
        let progress = Double(step - warmupSteps) / Double(max(1, totalSteps - warmupSteps))
        return peak * max(0, 0.5 * (1 + cos(Double.pi * progress)))
    }
}

/// Scales the gradients so their global L2 norm is at most `maxNorm` (coefficient maxNorm / (norm + 1e-6), as
/// torch) and returns the norm before clipping.
@discardableResult
public func clipGradients(_ gradients: any FlatParameters, maxNorm: Double) -> Double {
    let norm = gradients.norm()
    let coef = maxNorm / (norm + 1e-6)
    if coef < 1 { ck_train_scale(gradients.data, Int64(gradients.count), Float(coef)) }
    return norm
}
