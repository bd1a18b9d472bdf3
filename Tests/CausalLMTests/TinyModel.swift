import Foundation
import CausalLM
import CausalKernels

/// A tiny LLaMA with seeded random weights, written as a GGUF file, with a one-character-per-token tokenizer.
/// Used by tests that need many forward passes (batch invariance), where the real model would be slow.
enum TinyModel {
    static let vocab = 97          // id 0 = end of sequence, ids 1... = the characters "!"...
    static let hidden = 64, ffn = 96, layers = 2, heads = 4, kvHeads = 2

    /// Writes the model with weights of `dtype` (F32, Q8_0, Q4_1...) and returns its path.
    static func write(dtype: DType, seed: UInt64 = 7) throws -> String {
        var rng = SequenceRNG(seed: seed)
        func rand(_ n: Int, _ scale: Float) -> [Float] { (0..<n).map { _ in Float(rng.nextUnitFloat() * 2 - 1) * scale } }
        func matrix(_ name: String, rows: Int, cols: Int, scale: Float = 0.2) -> GGUFWriter.Tensor {
            let x = rand(rows * cols, scale)
            guard dtype != .f32 else { return GGUFWriter.Tensor(name: name, dims: [cols, rows], floats: x) }
            var bytes = [UInt8](repeating: 0, count: dtype.rowBytes(cols)! * rows)
            bytes.withUnsafeMutableBytes { dst in
                for r in 0..<rows {
                    let out = dst.baseAddress! + r * dtype.rowBytes(cols)!
                    x.withUnsafeBufferPointer { src in
                        let row = src.baseAddress! + r * cols
                        switch dtype {
                        case .q8_0: ck_quantize_row_q8_0(row, out, Int64(cols))
                        case .q4_0: ck_quantize_row_q4_0(row, out, Int64(cols))
                        case .q4_1: ck_quantize_row_q4_1(row, out, Int64(cols))
                        default: fatalError("unsupported in the tiny model: \(dtype)")
                        }
                    }
                }
            }
            return GGUFWriter.Tensor(name: name, dims: [cols, rows], type: UInt32(dtype.rawValue), bytes: bytes)
        }
        func norm(_ name: String) -> GGUFWriter.Tensor {
            GGUFWriter.Tensor(name: name, dims: [hidden], floats: rand(hidden, 0.3).map { 1 + $0 })
        }
        let D = hidden / heads
        var w = GGUFWriter()
        w.metadata = [
            ("general.architecture", .string("llama")),
            ("llama.block_count", .u32(UInt32(layers))), ("llama.embedding_length", .u32(UInt32(hidden))),
            ("llama.feed_forward_length", .u32(UInt32(ffn))), ("llama.attention.head_count", .u32(UInt32(heads))),
            ("llama.attention.head_count_kv", .u32(UInt32(kvHeads))), ("llama.rope.freq_base", .f32(10000)),
            ("llama.attention.layer_norm_rms_epsilon", .f32(1e-5)), ("llama.context_length", .u32(256)),
            ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("default")),
            ("tokenizer.ggml.tokens", .strings(tokens)), ("tokenizer.ggml.token_type", .i32s([3] + Array(repeating: 1, count: vocab - 1))),
            ("tokenizer.ggml.merges", .strings([])), ("tokenizer.ggml.eos_token_id", .u32(0)),
        ]
        var t = [matrix("token_embd.weight", rows: vocab, cols: hidden, scale: 1), norm("output_norm.weight"),
                 matrix("output.weight", rows: vocab, cols: hidden)]
        for l in 0..<layers {
            let p = "blk.\(l)."
            t += [norm(p + "attn_norm.weight"), matrix(p + "attn_q.weight", rows: heads * D, cols: hidden),
                  matrix(p + "attn_k.weight", rows: kvHeads * D, cols: hidden), matrix(p + "attn_v.weight", rows: kvHeads * D, cols: hidden),
                  matrix(p + "attn_output.weight", rows: hidden, cols: heads * D), norm(p + "ffn_norm.weight"),
                  matrix(p + "ffn_gate.weight", rows: ffn, cols: hidden), matrix(p + "ffn_up.weight", rows: ffn, cols: hidden),
                  matrix(p + "ffn_down.weight", rows: hidden, cols: ffn)]
        }
        w.tensors = t
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("causal-tiny-\(dtype.name)-\(seed)-\(UUID().uuidString).gguf").path
        try w.write(to: path)
        return path
    }

    /// "<eos>", then the printable ASCII characters from "!" in GPT-2's byte-level spelling (they map to themselves).
    static let tokens: [String] = {
        var t = ["<eos>"]
        for i in 0..<(vocab - 1) {
            let c = String(UnicodeScalar(UInt8(33 + i % 94)))
            t.append(i >= 94 ? c + String(i) : c)
        }
        return t
    }()
}
