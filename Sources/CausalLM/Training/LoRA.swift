import Foundation
import CausalKernels
import CCausalKernels

// LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): a frozen linear layer y = x·Wᵀ gains a trainable
// low-rank update, y = x·Wᵀ + s · (drop(x)·Aᵀ)·Bᵀ, with A (r, in), B (out, r) and s = alpha / r (rsLoRA: alpha/√r).
// PEFT's initialisation: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0, so training starts at the base model.
//
// Layout: every (layer, target) pair that carries an adapter owns A then B, row-major fp32, in one flat buffer (the
// optimizer's `FlatParameters`). B's output rows are in the engine's row order for the base matrix: for a Q or K
// projection of a model whose RoPE rotates adjacent pairs (LLaMA GGUF files, `RopeStyle.adjacent`) that is GGUF's
// permuted order, so base and update line up row for row; PEFT files hold HF's order, and reading/writing them
// permutes B's rows of q/k (and nothing else: A's rows index the rank, its columns the unpermuted input).

/// A linear layer of the decoder block that LoRA can adapt; `rawValue` is the short name `--lora-targets` takes.
public enum LoRATarget: String, CaseIterable, Sendable, Codable {
    case q, k, v, o, gate, up, down

    /// The module name PEFT and transformers use (`q_proj`, `gate_proj`, ...).
    public var moduleName: String {
        switch self {
        case .q: return "q_proj"
        case .k: return "k_proj"
        case .v: return "v_proj"
        case .o: return "o_proj"
        case .gate: return "gate_proj"
        case .up: return "up_proj"
        case .down: return "down_proj"
        }
    }

    /// The module's path inside a decoder layer (`self_attn.q_proj`, `mlp.down_proj`).
    public var modulePath: String {
        switch self {
        case .q, .k, .v, .o: return "self_attn." + moduleName
        case .gate, .up, .down: return "mlp." + moduleName
        }
    }

    /// A target from its short name (`q`) or module name (`q_proj`).
    public init?(name: String) {
        if let t = LoRATarget(rawValue: name) { self = t; return }
        guard let t = LoRATarget.allCases.first(where: { $0.moduleName == name }) else { return nil }
        self = t
    }

    /// (out, in) of this layer's weight in a model of `config`.
    public func shape(_ config: DecoderConfig) -> (rows: Int, cols: Int) {
        let (C, F) = (config.hiddenSize, config.intermediateSize)
        let qDim = config.headCount * config.headDim, kvDim = config.kvHeadCount * config.headDim
        switch self {
        case .q: return (qDim, C)
        case .k, .v: return (kvDim, C)
        case .o: return (C, qDim)
        case .gate, .up: return (F, C)
        case .down: return (C, F)
        }
    }

    /// Heads whose rows a Q/K projection permutes in GGUF's adjacent-pair layout (nil: no permutation).
    func permutedHeads(_ config: DecoderConfig) -> Int? {
        guard config.ropeStyle == .adjacent else { return nil }
        switch self {
        case .q: return config.headCount
        case .k: return config.kvHeadCount
        default: return nil
        }
    }
}

/// The hyper-parameters of a LoRA adapter (PEFT's `LoraConfig` fields of the same meaning).
public struct LoRAConfig: Sendable, Equatable {
    public var rank: Int
    public var alpha: Double
    public var dropout: Double
    public var targets: [LoRATarget]
    /// Layers that carry adapters (PEFT's `layers_to_transform`); nil: every layer.
    public var layers: [Int]?
    /// rsLoRA scaling alpha/√r instead of alpha/r.
    public var useRSLoRA: Bool

    public init(rank: Int, alpha: Double? = nil, dropout: Double = 0, targets: [LoRATarget] = LoRATarget.allCases,
                layers: [Int]? = nil, useRSLoRA: Bool = false) {
        self.rank = rank; self.alpha = alpha ?? Double(rank); self.dropout = dropout
        self.targets = targets; self.layers = layers; self.useRSLoRA = useRSLoRA
    }

    /// The factor s of the update s · B·A.
    public var scale: Float { Float(useRSLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank)) }

    func validate(_ model: DecoderConfig) throws {
        guard rank > 0 else { throw CausalError.invalidArgument("LoRA rank must be positive, got \(rank)") }
        guard alpha.isFinite, alpha > 0 else { throw CausalError.invalidArgument("LoRA alpha must be positive, got \(alpha)") }
        guard dropout >= 0, dropout < 1 else { throw CausalError.invalidArgument("LoRA dropout must be in [0, 1), got \(dropout)") }
        guard !targets.isEmpty else { throw CausalError.invalidArgument("LoRA needs at least one target module") }
        guard Set(targets).count == targets.count else { throw CausalError.invalidArgument("LoRA targets repeat a module: \(targets.map(\.rawValue))") }
        for l in layers ?? [] where l < 0 || l >= model.layerCount {
            throw CausalError.invalidArgument("LoRA layer \(l) is outside the model's \(model.layerCount) layers")
        }
    }
}

/// The LoRA factors of one adapted linear layer: A (rank, inDim) and B (outDim, rank) at `a` and `b`.
public struct LoRASlot {
    public let layer: Int
    public let target: LoRATarget
    public let rank: Int, inDim: Int, outDim: Int
    /// Offsets of A and B in the adapter's flat buffer.
    public let aOffset: Int, bOffset: Int
}

/// A LoRA adapter for a decoder: its configuration and fp32 factors in one flat buffer.
public final class LoRAAdapter: FlatParameters, @unchecked Sendable {
    public let config: LoRAConfig
    /// The decoder configuration the factors are shaped for.
    public let model: DecoderConfig
    /// Adapted layers in (layer, target order of `LoRATarget.allCases`) order.
    public let slots: [LoRASlot]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>
    private let index: [Int: Int]   // layer * 8 + target ordinal -> slot

    /// Zero-filled factors (call `initialize(seed:)` for PEFT's initialisation).
    public init(config: LoRAConfig, model: DecoderConfig) throws {
        try config.validate(model)
        self.config = config
        self.model = model
        let layers = config.layers.map(Set.init) ?? Set(0..<model.layerCount)
        var slots: [LoRASlot] = [], index: [Int: Int] = [:], offset = 0
        for l in 0..<model.layerCount where layers.contains(l) {
            for (ti, t) in LoRATarget.allCases.enumerated() where config.targets.contains(t) {
                let (rows, cols) = t.shape(model)
                index[l * 8 + ti] = slots.count
                slots.append(LoRASlot(layer: l, target: t, rank: config.rank, inDim: cols, outDim: rows,
                                      aOffset: offset, bOffset: offset + config.rank * cols))
                offset += config.rank * (cols + rows)
            }
        }
        self.slots = slots; self.index = index; self.count = offset
        data = .allocate(capacity: max(offset, 1))
        data.initialize(repeating: 0, count: max(offset, 1))
    }

    deinit { data.deallocate() }

    /// The slot of `target` in `layer`, if that layer carries one.
    public func slot(layer: Int, target: LoRATarget) -> LoRASlot? {
        index[layer * 8 + LoRATarget.allCases.firstIndex(of: target)!].map { slots[$0] }
    }

    /// A (rank, inDim) of a slot.
    public func a(_ s: LoRASlot) -> UnsafeMutablePointer<Float> { data + s.aOffset }
    /// B (outDim, rank) of a slot.
    public func b(_ s: LoRASlot) -> UnsafeMutablePointer<Float> { data + s.bOffset }

    /// PEFT's initialisation: every A uniform in ±1/√inDim (kaiming_uniform with a = √5), every B zero. Seeded.
    public func initialize(seed: UInt64) {
        var rng = SequenceRNG(seed: seed)
        for s in slots {
            let bound = 1 / Float(s.inDim).squareRoot()
            let a = self.a(s)
            for i in 0..<(s.rank * s.inDim) { a[i] = (2 * Float(rng.nextUnitFloat()) - 1) * bound }
            self.b(s).update(repeating: 0, count: s.outDim * s.rank)
        }
    }

    /// Zeros of the same layout (gradients, optimizer moments).
    public func zerosLike() -> LoRAAdapter { try! LoRAAdapter(config: config, model: model) }

    /// A copy of the factors.
    public func clone() -> LoRAAdapter {
        let c = zerosLike()
        c.data.update(from: data, count: count)
        return c
    }

    public func zero() { data.update(repeating: 0, count: count) }

    // FlatParameters: A and B are matrices, so AdamW's weight decay applies to both (as transformers' Trainer,
    // which decays every parameter but biases and norms).
    public var decaySegments: [(offset: Int, count: Int, decays: Bool)] {
        slots.flatMap { [($0.aOffset, $0.rank * $0.inDim, true), ($0.bOffset, $0.outDim * $0.rank, true)] }
    }
    public func zeroBuffer() -> any FlatParameters { zerosLike() }

    /// y (rows, outDim) += s · (x·Aᵀ)·Bᵀ for x (rows, inDim): the adapter's update of one linear layer's output.
    /// Each row's result depends only on that row (the products reduce in a fixed order per row). `keepingT`, when
    /// given (rows × rank floats), receives t = x·Aᵀ (what training keeps for the backward).
    public func apply(_ s: LoRASlot, x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, pool: ThreadPool,
                      keepingT kept: UnsafeMutablePointer<Float>? = nil) {
        guard rows > 0 else { return }
        let t = kept ?? UnsafeMutablePointer<Float>.allocate(capacity: rows * s.rank)
        defer { if kept == nil { t.deallocate() } }
        TrainingOps.linearForward(x: x, weight: a(s), rows: rows, inDim: s.inDim, outDim: s.rank, out: t, pool: pool)
        // y += t·(s·B)ᵀ as one accumulating product over the rank (K = r): each (row, column) sums its r terms in
        // order and adds the sum to y once, in parallel, with no (rows, outDim) temporary. (A dot-product kernel
        // with K = 16 spends more on its reduction than on the products, and the separate scale and add were two
        // more passes over the output on one thread: about 8% of a LoRA step.)
        let r = s.rank, out = s.outDim, bp = b(s), scale = config.scale
        let st = UnsafeMutablePointer<Float>.allocate(capacity: r * out)
        defer { st.deallocate() }
        for o in 0..<out { for j in 0..<r { st[j * out + o] = scale * bp[o * r + j] } }
        TrainingOps.gemm(M: rows, N: out, K: r, A: t, aRow: r, aCol: 1, B: st, ldb: out, C: y, ldc: out,
                         accumulate: true, pool: pool)
    }
}
