import Foundation
import XCTest
import CausalLM
import CausalKernels

/// The decoder families as configurations of one block, against transformers: tiny random Qwen2 (q/k/v biases),
/// Qwen3 (QK-norm), Llama 3 (llama3 RoPE scaling) and Gemma 3 (sliding windows, local/global RoPE bases, GeGLU, four
/// norms, scaled embeddings, tied head) of Tests/Fixtures/tiny (made by Tests/Fixtures/gen/make_family_fixtures.py).
/// Logits within 1e-4 of HF's fp32 logits relative to the largest |logit|, from the HF directory and from a GGUF of the
/// same weights in llama.cpp's layout; greedy tokens equal; batched, padded and chunked runs bit-identical to alone.
final class FamilyDecoderTests: XCTestCase {
    static let families = ["qwen2", "qwen3", "llama3", "gemma3"]

    struct Refs {
        let rows: [[Int]]
        let padID: Int
        let offsets: [Int]
        let single: [Float]       // (positions of all rows, V)
        let padded: [Float]       // the valid positions of HF's left-padded batch, same layout
        let greedySingle: [[Int]]
        let greedyPadded: [[Int]]
    }

    static func refs(_ family: String) throws -> Refs {
        let r = try XCTUnwrap(Fixtures.json("tiny/\(family)/refs.json") as? [String: Any])
        return Refs(rows: r["rows"] as! [[Int]], padID: r["pad_id"] as! Int, offsets: r["row_offsets"] as! [Int],
                    single: try Fixtures.npyFloats("tiny/\(family)/logits_single.npy"),
                    padded: try Fixtures.npyFloats("tiny/\(family)/logits_padded_batch.npy"),
                    greedySingle: r["greedy_single"] as! [[Int]], greedyPadded: r["greedy_padded_batch"] as! [[Int]])
    }

    static func directory(_ family: String) -> String { Fixtures.url("tiny/\(family)").path }

    /// max |ours - ref| / max(1, max |ref|) over a row's logits.
    func relativeDiff(_ ours: [Float], _ ref: ArraySlice<Float>) -> Double {
        XCTAssertEqual(ours.count, ref.count)
        var worst = 0.0, scale = 1.0
        for (a, b) in zip(ours, ref) { worst = max(worst, Double(abs(a - b))); scale = max(scale, Double(abs(b))) }
        return worst / scale
    }

    func testConfigurationsReadFromConfigJSON() throws {
        let q2 = try XCTUnwrap(try ModelBundle(path: Self.directory("qwen2")).model as? DecoderModel).config
        XCTAssertEqual(q2.architecture, "qwen2"); XCTAssertTrue(q2.attentionBias); XCTAssertEqual(q2.ropeStyle, .half)
        XCTAssertFalse(q2.isPlainLlama)
        let q3 = try XCTUnwrap(try ModelBundle(path: Self.directory("qwen3")).model as? DecoderModel).config
        XCTAssertTrue(q3.qkNorm); XCTAssertFalse(q3.attentionBias)
        let l3 = try XCTUnwrap(try ModelBundle(path: Self.directory("llama3")).model as? DecoderModel).config
        XCTAssertEqual(l3.ropeScaling, .llama3(factor: 8, lowFrequencyFactor: 1, highFrequencyFactor: 4, originalContext: 64))
        XCTAssertEqual(l3.ropeTheta, 500000)
        let g3 = try XCTUnwrap(try ModelBundle(path: Self.directory("gemma3")).model as? DecoderModel).config
        XCTAssertEqual(g3.slidingWindow, 4)
        XCTAssertEqual(g3.slidingLayers, [true, true, true, true, true, false])
        XCTAssertEqual(g3.localRopeTheta, 10000); XCTAssertEqual(g3.ropeTheta, 1_000_000)
        XCTAssertEqual(g3.activation, .geluTanh); XCTAssertTrue(g3.postNorms); XCTAssertTrue(g3.qkNorm)
        XCTAssertEqual(g3.embeddingScale, Float(64).squareRoot())
        // Training runs plain LLaMA blocks only, and says so.
        XCTAssertThrowsError(try ModelBundle(path: Self.directory("gemma3")).llama) { XCTAssertTrue("\($0)".contains("gemma3"), "\($0)") }
    }

    /// Every row alone (all positions) against HF, then the left-padded HF batch unpadded into one ragged batch and
    /// a chunked run, each bit-identical to alone.
    func checkLogits(_ m: any LanguageModel, _ refs: Refs, _ label: String) throws {
        let V = m.vocabularySize
        var alone: [[Float]] = [], worst = 0.0
        for (i, row) in refs.rows.enumerated() {
            let out = try m.forward([SequenceChunk(cache: m.makeCache(capacity: nil), tokens: row, logits: .all)])[0]
            let ref = refs.single[(refs.offsets[i] * V)..<(refs.offsets[i + 1] * V)]
            let d = relativeDiff(out, ref)
            XCTAssertLessThanOrEqual(d, 1e-4, "\(label) row \(i) alone")
            let dp = relativeDiff(out, refs.padded[(refs.offsets[i] * V)..<(refs.offsets[i + 1] * V)])
            XCTAssertLessThanOrEqual(dp, 1e-4, "\(label) row \(i) vs HF padded batch")
            worst = max(worst, d)
            alone.append(out)
        }
        print("\(label): max |Δ| / max|logit| = \(worst)")
        let padded = PaddedBatch.padding(refs.rows, side: .left, padID: refs.padID)
        let rows = try padded.unpadded(vocabularySize: V)
        let batch = try m.forward(rows.map { SequenceChunk(cache: m.makeCache(capacity: nil), tokens: $0, logits: .all) })
        for b in rows.indices { XCTAssertEqual(batch[b].map(\.bitPattern), alone[b].map(\.bitPattern), "\(label) row \(b): batch != alone") }
        // The longest row in chunks of 3 positions, beside the others' whole rows.
        let long = refs.rows.count - 1, cache = m.makeCache(capacity: nil)
        var chunked: [Float] = []
        var at = 0
        while at < refs.rows[long].count {
            let end = min(at + 3, refs.rows[long].count)
            let others = refs.rows.prefix(long).map { SequenceChunk(cache: m.makeCache(capacity: nil), tokens: $0, logits: .last) }
            let out = try m.forward(others + [SequenceChunk(cache: cache, tokens: Array(refs.rows[long][at..<end]), logits: .all)])
            chunked += out.last!
            at = end
        }
        XCTAssertEqual(chunked.map(\.bitPattern), alone[long].map(\.bitPattern), "\(label): chunked != alone")
    }

    func testLogitsFromHFDirectoriesMatchTransformers() throws {
        for family in Self.families {
            let refs = try Self.refs(family)
            for precision in Precision.allCases {
                try checkLogits(try ModelBundle(path: Self.directory(family), precision: precision).model, refs, "\(family) \(precision)")
            }
        }
    }

    func testLogitsFromGGUFOfTheSameWeightsMatchTransformers() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-family-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for family in Self.families {
            let path = dir.appendingPathComponent("\(family).gguf").path
            try TinyGGUFExport.write(hfDirectory: Self.directory(family), to: path)
            let gguf = try GGUFFile(path: path)
            let m = try DecoderModel(gguf: gguf)
            XCTAssertEqual(m.config.architecture, family == "llama3" ? "llama" : family)
            try checkLogits(m, try Self.refs(family), "\(family) gguf")
        }
    }

    func testGreedyAloneAndFromPaddedBatchesMatchTransformers() throws {
        for family in Self.families {
            let refs = try Self.refs(family)
            XCTAssertEqual(refs.greedySingle, refs.greedyPadded, family)
            let bundle = try ModelBundle(path: Self.directory(family))
            let p = GenerateParameters(maxNewTokens: 16, minNewTokens: 16)
            let g = Generator(model: bundle.model, tokenizer: nil, endTokenIDs: bundle.endTokenIDs)
            let alone = try refs.rows.map { try g.generate([SequenceRequest(prompt: $0, parameters: p)])[0].tokens }
            XCTAssertEqual(alone, refs.greedySingle, "\(family) alone")
            for side in PaddingSide.allCases {
                let rows = try PaddedBatch.padding(refs.rows, side: side, padID: refs.padID).unpadded(vocabularySize: bundle.model.vocabularySize)
                for chunk in [nil, 2] {
                    let batch = try g.generate(rows.map { SequenceRequest(prompt: $0, parameters: p) }, chunkSize: chunk).map(\.tokens)
                    XCTAssertEqual(batch, refs.greedySingle, "\(family) \(side) chunk \(String(describing: chunk))")
                }
            }
        }
    }

    func testUnusedOrUnsupportedInputsAreErrors() throws {
        // A config key that changes the math and is not implemented is refused, naming the key.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-family-bad-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let src = URL(fileURLWithPath: Self.directory("qwen2"))
        for f in ["model.safetensors", "generation_config.json"] {
            try FileManager.default.copyItem(at: src.appendingPathComponent(f), to: dir.appendingPathComponent(f))
        }
        var config = try String(contentsOf: src.appendingPathComponent("config.json"), encoding: .utf8)
        config = config.replacingOccurrences(of: "\"model_type\": \"qwen2\"", with: "\"model_type\": \"qwen2\", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}")
        try config.write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ModelBundle(path: dir.path)) { XCTAssertTrue("\($0)".contains("rope_scaling") && "\($0)".contains("yarn"), "\($0)") }

        // A GGUF architecture the engine does not know is refused, naming the key and listing the supported ones.
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("mamba"))]
        let path = dir.appendingPathComponent("m.gguf").path
        try w.write(to: path)
        XCTAssertThrowsError(try DecoderModel(gguf: try GGUFFile(path: path))) {
            XCTAssertTrue("\($0)".contains("general.architecture") && "\($0)".contains("qwen2"), "\($0)")
        }
    }
}

/// Writes a tiny Hugging Face decoder directory as an F32 GGUF in llama.cpp's layout (tensor names, LLaMA's Q/K row
/// permutation, Gemma norms stored as 1 + w, Llama 3's scaling as `rope_freqs.weight`), for the tests above.
enum TinyGGUFExport {
    static func write(hfDirectory: String, to path: String) throws {
        let config = try ConfigJSON(path: hfDirectory + "/config.json")
        let cfg = try DecoderConfig(config: config)
        let ck = try SafetensorsCheckpoint(path: hfDirectory)
        let arch = cfg.architecture
        let (C, F, V, D) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize, cfg.headDim)
        let qDim = cfg.headCount * D, kvDim = cfg.kvHeadCount * D
        let gemma = arch == "gemma3"
        func floats(_ name: String, rows: Int, cols: Int) throws -> [Float] {
            let m = try ck.matrix(name, rows: rows, cols: cols)
            var out = [Float](repeating: 0, count: rows * cols)
            out.withUnsafeMutableBufferPointer { dequantizeAll(m, into: $0.baseAddress!) }
            return out
        }
        var tensors: [GGUFWriter.Tensor] = []
        func mat(_ gg: String, _ hf: String, rows: Int, cols: Int, permute: Bool = false) throws {
            var x = try floats(hf, rows: rows, cols: cols)
            if permute {   // HF rotate-half rows -> llama.cpp's adjacent-pair rows, per head
                let src = x
                for r in 0..<rows {
                    let h = r / D, j = r % D, i = j / 2, a = j % 2
                    let from = h * D + a * (D / 2) + i
                    for c in 0..<cols { x[r * cols + c] = src[from * cols + c] }
                }
            }
            tensors.append(GGUFWriter.Tensor(name: gg, dims: [cols, rows], floats: x))
        }
        func vec(_ gg: String, _ hf: String, _ n: Int, norm: Bool = false) throws {
            var x = try ck.vector(hf, count: n)
            if norm && gemma { x = x.map { 1 + $0 } }
            tensors.append(GGUFWriter.Tensor(name: gg, dims: [n], floats: x))
        }
        let permute = arch == "llama"
        try mat("token_embd.weight", "model.embed_tokens.weight", rows: V, cols: C)
        for l in 0..<cfg.layerCount {
            let p = "model.layers.\(l).", g = "blk.\(l)."
            try vec(g + "attn_norm.weight", p + "input_layernorm.weight", C, norm: true)
            try mat(g + "attn_q.weight", p + "self_attn.q_proj.weight", rows: qDim, cols: C, permute: permute)
            try mat(g + "attn_k.weight", p + "self_attn.k_proj.weight", rows: kvDim, cols: C, permute: permute)
            try mat(g + "attn_v.weight", p + "self_attn.v_proj.weight", rows: kvDim, cols: C)
            try mat(g + "attn_output.weight", p + "self_attn.o_proj.weight", rows: C, cols: qDim)
            if cfg.attentionBias {
                try vec(g + "attn_q.bias", p + "self_attn.q_proj.bias", qDim)
                try vec(g + "attn_k.bias", p + "self_attn.k_proj.bias", kvDim)
                try vec(g + "attn_v.bias", p + "self_attn.v_proj.bias", kvDim)
            }
            if cfg.qkNorm {
                try vec(g + "attn_q_norm.weight", p + "self_attn.q_norm.weight", D, norm: true)
                try vec(g + "attn_k_norm.weight", p + "self_attn.k_norm.weight", D, norm: true)
            }
            if gemma {
                try vec(g + "post_attention_norm.weight", p + "post_attention_layernorm.weight", C, norm: true)
                try vec(g + "ffn_norm.weight", p + "pre_feedforward_layernorm.weight", C, norm: true)
                try vec(g + "post_ffw_norm.weight", p + "post_feedforward_layernorm.weight", C, norm: true)
            } else {
                try vec(g + "ffn_norm.weight", p + "post_attention_layernorm.weight", C)
            }
            try mat(g + "ffn_gate.weight", p + "mlp.gate_proj.weight", rows: F, cols: C)
            try mat(g + "ffn_up.weight", p + "mlp.up_proj.weight", rows: F, cols: C)
            try mat(g + "ffn_down.weight", p + "mlp.down_proj.weight", rows: C, cols: F)
        }
        try vec("output_norm.weight", "model.norm.weight", C, norm: true)
        if !(try config.bool("tie_word_embeddings", default: gemma)) { try mat("output.weight", "lm_head.weight", rows: V, cols: C) }
        if case let .llama3(factor, low, high, original) = cfg.ropeScaling {
            // llama.cpp's converter stores, per frequency, the divisor that turns the plain frequency into Llama 3's.
            var plain = cfg; plain.ropeScaling = .none
            let base = plain.ropeFrequencies(layer: 0)
            let lowWave = Double(original) / low, highWave = Double(original) / high
            let factors: [Float] = base.map { f in
                let wave = 2 * Double.pi / Double(f)
                if wave < highWave { return 1 }
                if wave > lowWave { return Float(factor) }
                let smooth = (Double(original) / wave - low) / (high - low)
                return Float(1 / ((1 - smooth) / factor + smooth))
            }
            tensors.append(GGUFWriter.Tensor(name: "rope_freqs.weight", dims: [factors.count], floats: factors))
        }
        var w = GGUFWriter()
        let a = arch
        w.metadata = [
            ("general.architecture", .string(a)),
            ("\(a).block_count", .u32(UInt32(cfg.layerCount))),
            ("\(a).context_length", .u32(UInt32(cfg.contextLength))),
            ("\(a).embedding_length", .u32(UInt32(C))),
            ("\(a).feed_forward_length", .u32(UInt32(F))),
            ("\(a).attention.head_count", .u32(UInt32(cfg.headCount))),
            ("\(a).attention.head_count_kv", .u32(UInt32(cfg.kvHeadCount))),
            ("\(a).attention.key_length", .u32(UInt32(D))),
            ("\(a).attention.value_length", .u32(UInt32(D))),
            ("\(a).rope.freq_base", .f32(Float(cfg.ropeTheta))),
            ("\(a).attention.layer_norm_rms_epsilon", .f32(Float(cfg.rmsNormEps))),
        ]
        if let win = cfg.slidingWindow { w.metadata.append(("\(a).attention.sliding_window", .u32(UInt32(win)))) }
        w.tensors = tensors
        try w.write(to: path)
    }
}
