import Foundation
import CausalKernels

// LLaMA from a Hugging Face directory (LlamaForCausalLM: config.json + model.safetensors or a sharded index), as in
// transformers' modeling_llama.py and configuration_llama.py.
//
// RoPE layout: HF rotates pairs (i, i + D/2) of each head ("rotate_half") on its own q_proj/k_proj rows; GGUF files
// carry llama.cpp's permutation of those rows, for which rotating adjacent pairs (2i, 2i+1) is the same rotation.
// We permute HF's q/k rows into GGUF's order at load (row h·D + 2i + a ← HF row h·D + a·D/2 + i, the inverse of
// `LlamaCheckpoint.hfRowOrder`) instead of switching the forward to `ck_rope_half`: each head's Q·K product is the
// same sum over the same pairs of elements (only the order of its terms changes), so the attention is HF's, and
// LlamaModel keeps one internal layout, the one its forward, its training (LlamaParameters) and its checkpoint writer
// (which undoes the permutation) already share. The copy costs only the Q and K matrices.
//
// Dimension legend: C = hidden size, H = query heads, Hkv = key/value heads, D = head size, F = MLP size, V = vocabulary.

extension LlamaConfig {
    /// Reads a Hugging Face `config.json` (LlamaForCausalLM); errors name the field and the file.
    /// `rope_theta` may be at the top level or under `rope_parameters` (transformers 5); `head_dim` is optional.
    public init(config c: ConfigJSON) throws {
        if c.has("model_type") {
            let t = try c.string("model_type")
            guard t == "llama" else { throw c.invalid("model_type", "'\(t)' is not supported by LlamaModel (supported: llama)") }
        }
        let act = try c.string("hidden_act", default: "silu")
        guard act == "silu" else { throw c.invalid("hidden_act", "'\(act)' is not supported (supported: silu)") }
        for key in ["attention_bias", "mlp_bias"] where try c.bool(key, default: false) {
            throw c.invalid(key, "biases in the LLaMA projections are not supported")
        }
        // RoPE: theta and type, at the top level (transformers 4) or under rope_parameters (transformers 5).
        var theta = try c.double("rope_theta", default: 10000)
        var ropeType = "default"
        if let rp = c.values["rope_parameters"], !rp.isNull {
            guard let o = rp.objectValue else { throw c.invalid("rope_parameters", "expected an object, found \(rp.typeName)") }
            let sub = ConfigJSON(path: c.path, values: o)
            do {
                if sub.has("rope_theta") { theta = try sub.double("rope_theta") }
                ropeType = try sub.string("rope_type", default: "default")
            } catch CausalError.badConfig(let key, let reason) {
                throw CausalError.badConfig(key: "rope_parameters.\(key)", reason: reason)
            }
        }
        if let rs = c.values["rope_scaling"], !rs.isNull {
            guard let o = rs.objectValue else { throw c.invalid("rope_scaling", "expected an object, found \(rs.typeName)") }
            ropeType = o["rope_type"]?.stringValue ?? o["type"]?.stringValue ?? ropeType
        }
        guard ropeType == "default" else { throw c.invalid("rope_parameters.rope_type", "'\(ropeType)' is not supported (supported: default)") }
        guard theta > 0, theta.isFinite else { throw c.invalid("rope_theta", "must be a positive number, found \(theta)") }

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
        if c.has("head_dim") { headDim = try positive("head_dim", try c.int("head_dim")) } else {
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
    }
}

extension LlamaModel {
    /// Loads a Hugging Face LLaMA directory: `config.json` and `model.safetensors` (or `model.safetensors.index.json`).
    /// F32, F16 and BF16 tensors; `fast` uses them in place (except Q/K, permuted copies), `reference` converts
    /// every matrix to fp32.
    public convenience init(directory: String, precision: Precision = .fast, pool: ThreadPool = .shared) throws {
        let config = try ConfigJSON(path: URL(fileURLWithPath: directory).appendingPathComponent("config.json").path)
        try self.init(config: config, checkpoint: SafetensorsCheckpoint(path: directory), precision: precision, pool: pool)
    }

    /// Weight names are Hugging Face's (`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`, ...,
    /// `lm_head.weight` unless `tie_word_embeddings`).
    public convenience init(config c: ConfigJSON, checkpoint: SafetensorsCheckpoint, precision: Precision = .fast,
                            pool: ThreadPool = .shared) throws {
        let cfg = try LlamaConfig(config: c)
        let tied = try c.bool("tie_word_embeddings", default: false)
        let (C, F, V, D) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize, cfg.headDim)
        let qDim = cfg.headCount * D, kvDim = cfg.kvHeadCount * D
        var owned: [UnsafeMutableRawPointer] = []

        /// A (rows, cols) matrix; with `permuteHeads`, its rows reordered from HF's rotate-half layout into GGUF's
        /// adjacent-pair layout (a byte copy of each row, any float type).
        func matrix(_ name: String, rows: Int, cols: Int, permuteHeads: Bool = false) throws -> WeightMatrix {
            var m = try checkpoint.matrix(name, rows: rows, cols: cols)
            if permuteHeads {
                let bytes = m.rowBytes
                let buf = UnsafeMutableRawPointer.allocate(byteCount: max(rows * bytes, 1), alignment: 64)
                owned.append(buf)
                for r in 0..<rows {
                    let hf = LlamaCheckpoint.hfRowOrder(ofGGUFRow: r, headDim: D)
                    (buf + r * bytes).copyMemory(from: m.data + hf * bytes, byteCount: bytes)
                }
                m = WeightMatrix(dtype: m.dtype, data: UnsafeRawPointer(buf), rows: rows, cols: cols)
            }
            guard precision == .reference, m.dtype != .f32 else { return m }
            let f = UnsafeMutablePointer<Float>.allocate(capacity: max(rows * cols, 1))
            owned.append(UnsafeMutableRawPointer(f))
            dequantizeAll(m, into: f)
            return WeightMatrix(dtype: .f32, data: UnsafeRawPointer(f), rows: rows, cols: cols)
        }
        func vector(_ name: String) throws -> [Float] { try checkpoint.vector(name, count: C) }

        do {
            let embedding = try matrix("model.embed_tokens.weight", rows: V, cols: C)
            let layers = try (0..<cfg.layerCount).map { l in
                let p = "model.layers.\(l)."
                return LlamaLayerWeights(
                    attnNorm: try vector(p + "input_layernorm.weight"),
                    q: try matrix(p + "self_attn.q_proj.weight", rows: qDim, cols: C, permuteHeads: true),
                    k: try matrix(p + "self_attn.k_proj.weight", rows: kvDim, cols: C, permuteHeads: true),
                    v: try matrix(p + "self_attn.v_proj.weight", rows: kvDim, cols: C),
                    o: try matrix(p + "self_attn.o_proj.weight", rows: C, cols: qDim),
                    mlpNorm: try vector(p + "post_attention_layernorm.weight"),
                    gate: try matrix(p + "mlp.gate_proj.weight", rows: F, cols: C),
                    up: try matrix(p + "mlp.up_proj.weight", rows: F, cols: C),
                    down: try matrix(p + "mlp.down_proj.weight", rows: C, cols: F))
            }
            let finalNorm = try vector("model.norm.weight")
            // A tied checkpoint may still carry a copy of lm_head.weight; HF ignores it, so do we.
            let output = tied ? embedding : try matrix("lm_head.weight", rows: V, cols: C)
            self.init(config: cfg, precision: precision, pool: pool, embedding: embedding, layers: layers,
                      finalNorm: finalNorm, output: output, storage: checkpoint, owned: owned)
        } catch {
            owned.forEach { $0.deallocate() }
            throw error
        }
    }
}
