import Foundation

// One decoder definition for the LLaMA family and its descendants: what differs between LLaMA/SmolLM2, Llama 3.x,
// Qwen2/2.5, Qwen3 and Gemma 3 is data in this struct, read from GGUF metadata or config.json through one name table
// per format (`DecoderConfig.init(gguf:)`, `DecoderConfig.init(config:)`). `DecoderModel` runs every one of them with
// the same block:
//
//   h = norm(x);  q, k, v = h·Wq (+bq), h·Wk (+bk), h·Wv (+bv);  [q, k = qkNorm(q), qkNorm(k) per head]
//   q, k = rope(q), rope(k);  a = attention(q, cache(k, v)) over the window (all earlier positions, or the last W)
//   x = x + [postAttnNorm](a·Wo)
//   h = norm(x);  x = x + [postMlpNorm](down(act(h·Wgate) ⊙ h·Wup))
//   logits = softcap(norm(x)·Wout)
//
// Gemma's RMSNorm multiplies by (1 + w): the loaders store 1 + w (as llama.cpp's GGUF files already do), so the block
// has one RMSNorm.

public struct DecoderConfig: Sendable, Equatable {
    /// How Q/K rows are laid out for RoPE: `adjacent` rotates pairs (2i, 2i+1) (llama.cpp's permuted LLaMA rows),
    /// `half` rotates (i, i + ropeDim/2) (Hugging Face's rotate_half; GGUF "NEOX" families: Qwen, Gemma).
    public enum RopeStyle: String, Sendable { case adjacent, half }
    /// The MLP's gate activation: SwiGLU (silu) or GeGLU with tanh-GELU (Gemma's gelu_pytorch_tanh).
    public enum Activation: String, Sendable { case silu, geluTanh }
    /// How RoPE frequencies are rescaled for long contexts.
    public enum RopeScaling: Sendable, Equatable {
        case none
        /// Every frequency divided by `factor` (position interpolation).
        case linear(factor: Double)
        /// Llama 3.1's frequency-dependent scaling (`rope_type: llama3`).
        case llama3(factor: Double, lowFrequencyFactor: Double, highFrequencyFactor: Double, originalContext: Int)
    }

    public var architecture: String = "llama"
    public var vocabularySize: Int
    public var hiddenSize: Int          // C
    public var intermediateSize: Int    // F
    public var layerCount: Int
    public var headCount: Int           // H
    public var kvHeadCount: Int         // Hkv
    public var headDim: Int             // D
    public var ropeDim: Int
    public var ropeTheta: Double
    public var rmsNormEps: Double
    public var contextLength: Int

    public var ropeStyle: RopeStyle = .adjacent
    public var ropeScaling: RopeScaling = .none
    /// RoPE base of the sliding-window layers when it differs from `ropeTheta` (Gemma 3: 10,000), without scaling.
    public var localRopeTheta: Double? = nil
    /// q, k and v projections carry biases (Qwen2).
    public var attentionBias: Bool = false
    /// RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3).
    public var qkNorm: Bool = false
    public var activation: Activation = .silu
    /// Embeddings are multiplied by this (Gemma: sqrt(hidden size)); nil = 1.
    public var embeddingScale: Float? = nil
    /// Attention scores are scaled by this; nil = 1/sqrt(headDim).
    public var attentionScale: Float? = nil
    /// Keys visible to a sliding-window layer: the last `slidingWindow` positions (its own included).
    public var slidingWindow: Int? = nil
    /// Per layer, whether it is a sliding-window layer (empty: none is).
    public var slidingLayers: [Bool] = []
    /// Norms after the attention and after the MLP, before each residual add (Gemma 2/3's four norms per block).
    public var postNorms: Bool = false
    /// Final logits = cap · tanh(logits / cap) (Gemma 2 style), when set.
    public var finalLogitSoftcap: Double? = nil

    public init(vocabularySize: Int, hiddenSize: Int, intermediateSize: Int, layerCount: Int, headCount: Int,
                kvHeadCount: Int, headDim: Int? = nil, ropeDim: Int? = nil, ropeTheta: Double = 10000,
                rmsNormEps: Double = 1e-5, contextLength: Int = 2048) {
        self.vocabularySize = vocabularySize; self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.layerCount = layerCount; self.headCount = headCount; self.kvHeadCount = kvHeadCount
        self.headDim = headDim ?? hiddenSize / headCount
        self.ropeDim = ropeDim ?? self.headDim
        self.ropeTheta = ropeTheta; self.rmsNormEps = rmsNormEps; self.contextLength = contextLength
    }

    /// True for a plain LLaMA block (what the training code implements): no biases, no QK-norm, SwiGLU, default RoPE,
    /// no windows, no extra norms, no scaling of embeddings, scores or logits.
    public var isPlainLlama: Bool {
        !attentionBias && !qkNorm && activation == .silu && ropeScaling == .none && localRopeTheta == nil
            && embeddingScale == nil && attentionScale == nil && slidingWindow == nil && !postNorms
            && finalLogitSoftcap == nil && ropeStyle == .adjacent
    }

    /// The options that differ from a plain LLaMA block, in words ("none" for LLaMA): what `causal info` prints.
    public var features: String {
        var f: [String] = []
        if attentionBias { f.append("q/k/v biases") }
        if qkNorm { f.append("QK-norm") }
        if activation == .geluTanh { f.append("GeGLU (tanh)") }
        switch ropeScaling {
        case .none: break
        case let .linear(factor): f.append("linear RoPE scaling x\(factor)")
        case let .llama3(factor, low, high, original): f.append("llama3 RoPE scaling (factor \(factor), low \(low), high \(high), original context \(original))")
        }
        if ropeStyle == .half { f.append("rotate-half RoPE") }
        if let w = slidingWindow {
            let n = slidingLayers.filter { $0 }.count
            f.append("sliding window \(w) on \(n) of \(layerCount) layers" + (localRopeTheta.map { " (RoPE base \($0))" } ?? ""))
        }
        if postNorms { f.append("post-attention/MLP norms") }
        if let s = embeddingScale { f.append("embeddings x\(s)") }
        if let s = attentionScale { f.append("attention scale \(s)") }
        if let c = finalLogitSoftcap { f.append("final logit soft-cap \(c)") }
        return f.isEmpty ? "none (plain LLaMA)" : f.joined(separator: ", ")
    }

    /// Whether layer `l` attends over a sliding window.
    public func isSliding(_ l: Int) -> Bool { slidingWindow != nil && l < slidingLayers.count && slidingLayers[l] }

    /// RoPE inverse frequencies (ropeDim/2 values) of layer `l`, computed in fp32 as transformers does:
    /// 1 / base^(2i/d), then the layer's scaling; `factors` (GGUF `rope_freqs.weight`) divide them when given.
    public func ropeFrequencies(layer l: Int, factors: [Float]? = nil) -> [Float] {
        let local = isSliding(l) && localRopeTheta != nil
        let base = Float(local ? localRopeTheta! : ropeTheta)
        let half = ropeDim / 2
        var f = (0..<half).map { i in Float(1) / powf(base, Float(2 * i) / Float(ropeDim)) }
        if local { return f }
        if let factors { for i in 0..<half { f[i] = f[i] / factors[i] } }
        switch ropeScaling {
        case .none: break
        case let .linear(factor):
            for i in 0..<half { f[i] = f[i] / Float(factor) }
        case let .llama3(factor, low, high, original):
            let fac = Float(factor), lowWave = Float(original) / Float(low), highWave = Float(original) / Float(high)
            for i in 0..<half {
                let wave = 2 * Float.pi / f[i]
                let scaled = wave > lowWave ? f[i] / fac : f[i]
                if wave < highWave || wave > lowWave { f[i] = scaled; continue }
                let smooth = (Float(original) / wave - Float(low)) / (Float(high) - Float(low))
                f[i] = (1 - smooth) * scaled / fac + smooth * scaled
            }
        }
        return f
    }

    func validate(path: String) throws {
        let a = architecture
        func bad(_ k: String, _ why: String) -> CausalError { .badFormat(path: path, field: a + "." + k, reason: why) }
        guard hiddenSize > 0 else { throw bad("embedding_length", "must be positive") }
        guard layerCount > 0 else { throw bad("block_count", "must be positive") }
        guard headCount > 0, kvHeadCount > 0, headCount % kvHeadCount == 0 else {
            throw bad("attention.head_count_kv", "\(headCount) query heads are not a multiple of \(kvHeadCount) key/value heads")
        }
        guard headDim > 0, ropeDim <= headDim, ropeDim % 2 == 0 else { throw bad("rope.dimension_count", "\(ropeDim) must be even and at most the head size \(headDim)") }
        guard vocabularySize > 0 else { throw bad("vocab_size", "must be positive") }
        guard intermediateSize > 0 else { throw bad("feed_forward_length", "must be positive") }
        guard contextLength > 0 else { throw bad("context_length", "must be positive") }
        if let w = slidingWindow, w <= 0 { throw bad("attention.sliding_window", "must be positive, found \(w)") }
    }
}

/// The LLaMA configuration is the decoder configuration with every option at its default.
public typealias LlamaConfig = DecoderConfig

// MARK: - GGUF name table

extension DecoderConfig {
    /// The architectures a GGUF file may name, and what each sets beyond the shared `{arch}.*` keys.
    public static let ggufArchitectures = ["llama", "qwen2", "qwen3", "gemma3"]

    /// Reads `{arch}.*` keys from GGUF metadata; errors name the key. A key that changes the math and that the engine
    /// does not implement (an unknown RoPE scaling type, attention soft-capping) is an error, never ignored.
    public init(gguf: GGUFFile) throws {
        let arch = try gguf.string("general.architecture")
        guard Self.ggufArchitectures.contains(arch) else {
            throw CausalError.badFormat(path: gguf.path, field: "general.architecture",
                                        reason: "'\(arch)' is not supported (supported: \(Self.ggufArchitectures.joined(separator: ", ")))")
        }
        let p = arch + "."
        func opt(_ k: String) throws -> Int? { gguf.has(p + k) ? try gguf.int(p + k) : nil }
        func optF(_ k: String) throws -> Double? { gguf.has(p + k) ? try gguf.float(p + k) : nil }
        let heads = try gguf.int(p + "attention.head_count")
        let hidden = try gguf.int(p + "embedding_length")
        var vocab = try opt("vocab_size") ?? 0
        if vocab == 0, let t = gguf.tensorsByName["token_embd.weight"], t.dims.count == 2 { vocab = t.dims[1] }
        self.init(
            vocabularySize: vocab,
            hiddenSize: hidden,
            intermediateSize: try gguf.int(p + "feed_forward_length"),
            layerCount: try gguf.int(p + "block_count"),
            headCount: heads,
            kvHeadCount: try opt("attention.head_count_kv") ?? heads,
            headDim: try opt("attention.key_length"),
            ropeDim: try opt("rope.dimension_count"),
            ropeTheta: try optF("rope.freq_base") ?? 10000,
            rmsNormEps: try gguf.float(p + "attention.layer_norm_rms_epsilon"),
            contextLength: try opt("context_length") ?? 2048)
        architecture = arch
        if let vl = try opt("attention.value_length"), vl != headDim {
            throw CausalError.badFormat(path: gguf.path, field: p + "attention.value_length", reason: "\(vl) differs from the key length \(headDim); not supported")
        }
        if let type = gguf.has(p + "rope.scaling.type") ? try gguf.string(p + "rope.scaling.type") : nil {
            switch type {
            case "none": break
            case "linear":
                let f = try optF("rope.scaling.factor") ?? 1
                if f != 1 { ropeScaling = .linear(factor: f) }
            default:
                throw CausalError.badFormat(path: gguf.path, field: p + "rope.scaling.type", reason: "'\(type)' is not supported (supported: none, linear; llama3 through rope_freqs.weight)")
            }
        }
        if let cap = try optF("attn_logit_softcapping"), cap != 0 {
            throw CausalError.badFormat(path: gguf.path, field: p + "attn_logit_softcapping", reason: "attention soft-capping is not supported")
        }
        if let cap = try optF("final_logit_softcapping"), cap != 0 { finalLogitSoftcap = cap }
        switch arch {
        case "llama":
            ropeStyle = .adjacent   // llama.cpp's converter permutes LLaMA's Q/K rows for adjacent pairs
        case "qwen2":
            ropeStyle = .half; attentionBias = true
        case "qwen3":
            ropeStyle = .half; qkNorm = true
        case "gemma3":
            // Facts of llama.cpp's gemma3 graph that the file does not store: every 6th layer is global, the others
            // slide with RoPE base 10,000; embeddings scaled by sqrt(hidden); GeGLU; four norms per block.
            ropeStyle = .half; qkNorm = true; activation = .geluTanh; postNorms = true
            embeddingScale = Float(hidden).squareRoot()
            if let w = try opt("attention.sliding_window") {
                slidingWindow = w
                let pattern = try opt("attention.sliding_window_pattern") ?? 6
                slidingLayers = (0..<layerCount).map { ($0 + 1) % pattern != 0 }
                localRopeTheta = 10000
            }
            if let s = try optF("rope.scaling.factor"), s != 1, ropeScaling == .none { ropeScaling = .linear(factor: s) }
        default: break
        }
        try validate(path: gguf.path)
    }
}

// MARK: - config.json name table

extension DecoderConfig {
    /// The `model_type` values a Hugging Face directory may name.
    public static let hfModelTypes = ["llama", "qwen2", "qwen3", "gemma3_text", "gemma3"]

    /// Reads a Hugging Face `config.json` (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM);
    /// errors name the field and the file. RoPE keys may be at the top level (transformers 4) or under
    /// `rope_parameters` (transformers 5, per layer type for Gemma 3).
    public init(config top: ConfigJSON) throws {
        var c = top
        var type = top.has("model_type") ? try top.string("model_type") : "llama"
        if type == "gemma3", let t = top.values["text_config"]?.objectValue {   // a multimodal checkpoint's text half
            c = ConfigJSON(path: top.path, values: t); type = "gemma3_text"
        }
        guard Self.hfModelTypes.contains(type) else {
            throw c.invalid("model_type", "'\(type)' is not supported by the decoder (supported: \(Self.hfModelTypes.joined(separator: ", ")))")
        }
        let gemma = type.hasPrefix("gemma3")
        let act = try c.string(c.has("hidden_activation") ? "hidden_activation" : "hidden_act", default: gemma ? "gelu_pytorch_tanh" : "silu")
        let activation: Activation
        switch act {
        case "silu", "swish": activation = .silu
        case "gelu_pytorch_tanh", "gelu_new", "gelu_tanh": activation = .geluTanh
        default: throw c.invalid("hidden_act", "'\(act)' is not supported (supported: silu, gelu_pytorch_tanh)")
        }
        if try c.bool("mlp_bias", default: false) { throw c.invalid("mlp_bias", "biases in the MLP projections are not supported") }
        let defaultBias = type == "qwen2"
        let bias = try c.bool("attention_bias", default: defaultBias)
        if type == "qwen2", !bias { throw c.invalid("attention_bias", "Qwen2 without q/k/v biases is not supported") }
        if let cap = c.values["attn_logit_softcapping"], !cap.isNull {
            throw c.invalid("attn_logit_softcapping", "attention soft-capping is not supported")
        }

        // RoPE: theta and scaling, at the top level or under rope_parameters (for Gemma 3 possibly per layer type).
        func ropeObject(_ v: HFJSON?, _ key: String) throws -> ConfigJSON? {
            guard let v, !v.isNull else { return nil }
            guard let o = v.objectValue else { throw c.invalid(key, "expected an object, found \(v.typeName)") }
            return ConfigJSON(path: c.path, values: o)
        }
        /// Reads inside a sub-object, naming its keys with their path (`rope_parameters.rope_theta`).
        func inside<T>(_ prefix: String, _ body: () throws -> T) throws -> T {
            do { return try body() } catch CausalError.badConfig(let key, let reason) {
                throw CausalError.badConfig(key: key.hasPrefix(prefix + ".") ? key : "\(prefix).\(key)", reason: reason)
            }
        }
        var global = try ropeObject(c.values["rope_parameters"], "rope_parameters")
        var globalName = "rope_parameters"
        var local: ConfigJSON? = nil
        if let g = global, g.has("full_attention") || g.has("sliding_attention") {
            local = try ropeObject(g.values["sliding_attention"], "rope_parameters.sliding_attention")
            global = try ropeObject(g.values["full_attention"], "rope_parameters.full_attention")
            globalName = "rope_parameters.full_attention"
        }
        let scalingObject = try ropeObject(c.values["rope_scaling"], "rope_scaling")
        var theta = try c.double("rope_theta", default: gemma ? 1_000_000 : 10000)
        if let g = global, g.has("rope_theta") { theta = try inside(globalName) { try g.double("rope_theta") } }
        guard theta > 0, theta.isFinite else { throw c.invalid("rope_theta", "must be a positive number, found \(theta)") }
        let scalingSource = scalingObject ?? global
        let scalingName = scalingObject != nil ? "rope_scaling" : globalName
        var scaling = RopeScaling.none
        if let s = scalingSource { try inside(scalingName) {
            let rt = try s.string(s.has("rope_type") ? "rope_type" : "type", default: "default")
            func num(_ k: String) throws -> Double {
                guard s.has(k) else { throw c.invalid(k, "missing (needed by rope_type \(rt))") }
                return try s.double(k)
            }
            switch rt {
            case "default": break
            case "linear": scaling = .linear(factor: try num("factor"))
            case "llama3":
                scaling = .llama3(factor: try num("factor"), lowFrequencyFactor: try num("low_freq_factor"),
                                  highFrequencyFactor: try num("high_freq_factor"),
                                  originalContext: Int(try num("original_max_position_embeddings")))
            default: throw c.invalid("rope_type", "'\(rt)' is not supported (supported: default, linear, llama3)")
            }
        } }

        let heads = try c.int("num_attention_heads")
        let hidden = try c.int("hidden_size")
        func positive(_ key: String, _ v: Int) throws -> Int {
            guard v > 0 else { throw c.invalid(key, "must be positive, found \(v)") }
            return v
        }
        _ = try positive("num_attention_heads", heads)
        _ = try positive("hidden_size", hidden)
        let kvHeads = try positive("num_key_value_heads", try c.int("num_key_value_heads", default: heads))
        guard heads % kvHeads == 0 else {
            throw c.invalid("num_key_value_heads", "\(heads) query heads are not a multiple of \(kvHeads) key/value heads")
        }
        let headDim: Int
        if c.has("head_dim"), !(c.values["head_dim"]?.isNull ?? true) { headDim = try positive("head_dim", try c.int("head_dim")) } else {
            guard hidden % heads == 0 else { throw c.invalid("num_attention_heads", "hidden_size \(hidden) is not a multiple of \(heads) heads (and head_dim is not given)") }
            headDim = hidden / heads
        }
        guard headDim % 2 == 0 else { throw c.invalid("head_dim", "\(headDim) must be even for RoPE") }
        let eps = try c.double("rms_norm_eps", default: 1e-6)
        guard eps > 0, eps.isFinite else { throw c.invalid("rms_norm_eps", "must be a positive number, found \(eps)") }
        self.init(vocabularySize: try positive("vocab_size", try c.int("vocab_size")),
                  hiddenSize: hidden,
                  intermediateSize: try positive("intermediate_size", try c.int("intermediate_size")),
                  layerCount: try positive("num_hidden_layers", try c.int("num_hidden_layers")),
                  headCount: heads, kvHeadCount: kvHeads, headDim: headDim, ropeDim: headDim, ropeTheta: theta,
                  rmsNormEps: eps,
                  contextLength: try positive("max_position_embeddings", try c.int("max_position_embeddings", default: 2048)))
        architecture = type == "gemma3_text" ? "gemma3" : type
        self.activation = activation
        ropeScaling = scaling
        attentionBias = bias
        // HF directories keep rotate_half rows; LLaMA's are permuted at load into the adjacent layout its training shares.
        ropeStyle = type == "llama" ? .adjacent : .half
        qkNorm = type == "qwen3" || gemma
        if gemma {
            postNorms = true
            embeddingScale = Float(hidden).squareRoot()
            let qpas = try c.double("query_pre_attn_scalar", default: Double(headDim))
            attentionScale = Float(1 / qpas.squareRoot())
            if let cap = c.values["final_logit_softcapping"], !cap.isNull { finalLogitSoftcap = try c.double("final_logit_softcapping") }
            if let w = c.values["sliding_window"], !w.isNull {
                slidingWindow = try positive("sliding_window", try c.int("sliding_window"))
                if let types = c.values["layer_types"]?.arrayValue {
                    guard types.count == layerCount else { throw c.invalid("layer_types", "has \(types.count) entries for \(layerCount) layers") }
                    slidingLayers = try types.map {
                        switch $0.stringValue {
                        case "sliding_attention": return true
                        case "full_attention": return false
                        default: throw c.invalid("layer_types", "unknown layer type \($0.brief)")
                        }
                    }
                } else {
                    let pattern = try c.int("sliding_window_pattern", default: 6)
                    slidingLayers = (0..<layerCount).map { ($0 + 1) % pattern != 0 }
                }
                var lt = try c.double("rope_local_base_freq", default: 10000)
                if let l = local, l.has("rope_theta") { lt = try inside("rope_parameters.sliding_attention") { try l.double("rope_theta") } }
                localRopeTheta = lt
            }
        } else if type == "qwen2" || type == "qwen3" {
            if try c.bool("use_sliding_window", default: false) {
                throw c.invalid("use_sliding_window", "Qwen sliding-window attention is not supported")
            }
        }
        try validate(path: c.path)
    }
}
