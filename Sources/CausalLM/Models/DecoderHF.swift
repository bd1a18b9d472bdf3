import Foundation
import CausalKernels

// The decoder from a Hugging Face directory (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM:
// config.json + model.safetensors or a sharded index), as in transformers' modeling_*.py; the configuration is read
// by `DecoderConfig.init(config:)` (DecoderConfig.swift), the weights through HF's names below.
//
// Gemma's RMSNorm multiplies by (1 + w): its norm weights are stored here as 1 + w (computed in fp32, as HF does).
//
// RoPE layout (LLaMA only; the other families keep HF's rows and rotate halves): HF rotates pairs (i, i + D/2) of each head ("rotate_half") on its own q_proj/k_proj rows; GGUF files
// carry llama.cpp's permutation of those rows, for which rotating adjacent pairs (2i, 2i+1) is the same rotation.
// We permute HF's q/k rows into GGUF's order at load (row h·D + 2i + a ← HF row h·D + a·D/2 + i, the inverse of
// `LlamaCheckpoint.hfRowOrder`) instead of switching the forward to `ck_rope_half`: each head's Q·K product is the
// same sum over the same pairs of elements (only the order of its terms changes), so the attention is HF's, and
// LlamaModel keeps one internal layout, the one its forward, its training (LlamaParameters) and its checkpoint writer
// (which undoes the permutation) already share. The copy costs only the Q and K matrices.
//
// Dimension legend: C = hidden size, H = query heads, Hkv = key/value heads, D = head size, F = MLP size, V = vocabulary.

extension DecoderModel {
    /// Loads a Hugging Face decoder directory: `config.json` and `model.safetensors` (or `model.safetensors.index.json`).
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
        let cfg = try DecoderConfig(config: c)
        let tied = try c.bool("tie_word_embeddings", default: cfg.architecture == "gemma3")
        let permute = cfg.ropeStyle == .adjacent
        let plusOne = cfg.architecture == "gemma3"
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
        func vector(_ name: String, count: Int? = nil) throws -> [Float] { try checkpoint.vector(name, count: count ?? C) }
        func norm(_ name: String, count: Int? = nil) throws -> [Float] {
            let w = try vector(name, count: count)
            return plusOne ? w.map { 1 + $0 } : w
        }
        func optional(_ name: String, count: Int, used: Bool, isNorm: Bool = false) throws -> [Float]? {
            if used { return isNorm ? try norm(name, count: count) : try vector(name, count: count) }
            if checkpoint.has(name) {
                throw CausalError.badTensor(path: checkpoint.path, tensor: name, reason: "is not used by a \(cfg.architecture) model (the engine would ignore it)")
            }
            return nil
        }

        do {
            let embedding = try matrix("model.embed_tokens.weight", rows: V, cols: C)
            let layers = try (0..<cfg.layerCount).map { l in
                let p = "model.layers.\(l)."
                let gemma = cfg.postNorms
                return DecoderLayerWeights(
                    attnNorm: try norm(p + "input_layernorm.weight"),
                    q: try matrix(p + "self_attn.q_proj.weight", rows: qDim, cols: C, permuteHeads: permute),
                    k: try matrix(p + "self_attn.k_proj.weight", rows: kvDim, cols: C, permuteHeads: permute),
                    v: try matrix(p + "self_attn.v_proj.weight", rows: kvDim, cols: C),
                    o: try matrix(p + "self_attn.o_proj.weight", rows: C, cols: qDim),
                    // Gemma's post_attention_layernorm follows the attention; its MLP norm is pre_feedforward_layernorm.
                    mlpNorm: try norm(p + (gemma ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight")),
                    gate: try matrix(p + "mlp.gate_proj.weight", rows: F, cols: C),
                    up: try matrix(p + "mlp.up_proj.weight", rows: F, cols: C),
                    down: try matrix(p + "mlp.down_proj.weight", rows: C, cols: F),
                    qBias: try optional(p + "self_attn.q_proj.bias", count: qDim, used: cfg.attentionBias),
                    kBias: try optional(p + "self_attn.k_proj.bias", count: kvDim, used: cfg.attentionBias),
                    vBias: try optional(p + "self_attn.v_proj.bias", count: kvDim, used: cfg.attentionBias),
                    qNorm: try optional(p + "self_attn.q_norm.weight", count: D, used: cfg.qkNorm, isNorm: true),
                    kNorm: try optional(p + "self_attn.k_norm.weight", count: D, used: cfg.qkNorm, isNorm: true),
                    postAttnNorm: gemma ? try norm(p + "post_attention_layernorm.weight") : nil,
                    postMlpNorm: try optional(p + "post_feedforward_layernorm.weight", count: C, used: gemma, isNorm: true))
            }
            if checkpoint.has("model.layers.0.self_attn.o_proj.bias") {
                throw CausalError.badTensor(path: checkpoint.path, tensor: "model.layers.0.self_attn.o_proj.bias", reason: "output-projection biases are not supported")
            }
            let finalNorm = try norm("model.norm.weight")
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
