import Foundation

// Training from scratch: a LLaMA architecture from a Hugging Face style config.json and the initialisation of
// transformers' LlamaForCausalLM (`PreTrainedModel._init_weights`): every linear layer and the embedding drawn from
// normal(0, initializer_range), the embedding row of the padding token zeroed (nn.Embedding's padding_idx), every
// RMSNorm weight 1. The draws come from one seeded stream (`SequenceRNG`, Box-Muller), tensor by tensor in the
// order of `LlamaParameters.tensors`, so one seed gives one set of parameters on every machine.

/// The architecture of a model to train from scratch.
public struct LlamaArchitecture: Sendable, Equatable {
    public var config: LlamaConfig
    /// tie_word_embeddings (default false, as transformers' LlamaConfig).
    public var tiedEmbeddings: Bool
    /// initializer_range: the standard deviation of the initial weights (default 0.02).
    public var initializerRange: Double

    public init(config: LlamaConfig, tiedEmbeddings: Bool, initializerRange: Double = 0.02) {
        self.config = config; self.tiedEmbeddings = tiedEmbeddings; self.initializerRange = initializerRange
    }

    /// Reads a config.json (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    /// num_key_value_heads, head_dim, rms_norm_eps, rope_theta, max_position_embeddings, tie_word_embeddings,
    /// initializer_range, vocab_size). `vocab_size` may be left out, and is then `vocabularySize` (the tokenizer's);
    /// when given it must equal it. Errors name the field and the file.
    public init(path: String, vocabularySize: Int) throws {
        var c = try ConfigJSON(path: path)
        if c.has("vocab_size") {
            let v = try c.int("vocab_size")
            guard v == vocabularySize else {
                throw c.invalid("vocab_size", "\(v) does not match the tokenizer's vocabulary of \(vocabularySize) tokens (leave it out to use the tokenizer's)")
            }
        } else {
            var o = c.values
            o.append("vocab_size", .int(vocabularySize))
            c = ConfigJSON(path: path, values: o)
        }
        let config = try LlamaConfig(config: c)
        let range = try c.double("initializer_range", default: 0.02)
        guard range >= 0, range.isFinite else { throw c.invalid("initializer_range", "must be a non-negative number, found \(range)") }
        self.init(config: config, tiedEmbeddings: try c.bool("tie_word_embeddings", default: false), initializerRange: range)
    }
}

extension LlamaParameters {
    /// Freshly initialised parameters, as transformers' LlamaForCausalLM initialises them (see the top of this file).
    public convenience init(initializing arch: LlamaArchitecture, seed: UInt64, paddingTokenID: Int? = nil) {
        self.init(config: arch.config, tiedEmbeddings: arch.tiedEmbeddings)
        var rng = SequenceRNG(seed: seed)
        var spare: Double?
        // Box-Muller, two normals per pair of uniforms (the first in (0, 1] so that the log is finite).
        func normal() -> Double {
            if let s = spare { spare = nil; return s }
            let u1 = 1 - rng.nextUnitFloat(), u2 = rng.nextUnitFloat()
            let r = (-2 * Foundation.log(u1)).squareRoot(), a = 2 * Double.pi * u2
            spare = r * Foundation.sin(a)
            return r * Foundation.cos(a)
        }
        let std = arch.initializerRange
        for t in tensors {
            let v = values(t)
            if t.shape.count == 2 {
                for i in 0..<v.count { v[i] = Float(normal() * std) }
            } else {
                v.update(repeating: 1)
            }
        }
        if let pad = paddingTokenID, pad >= 0, pad < config.vocabularySize {
            (data + embedding + pad * config.hiddenSize).update(repeating: 0, count: config.hiddenSize)
        }
    }
}
