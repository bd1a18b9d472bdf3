import Foundation
import XCTest
import CausalLM

/// A prefix-LM (trained with `--attention prefix` or `mixed`) generates with the mask it was trained with: its prompt
/// attends bidirectionally (prefix) or half its heads read the prompt right to left (mixed), its response causally.
/// Held against the training code's own loss (LlamaTrainer with the same mask) on the same tiny model.
final class PrefixGenerationTests: XCTestCase {
    /// Sum of -log p(next token) over the response, from the inference forward: the prompt as the first chunk (the
    /// prefix), then the response tokens.
    func responseLoss(_ m: DecoderModel, prompt: [Int], response: [Int]) throws -> Double {
        let cache = m.makeCache(capacity: nil)
        let a = try m.forward([SequenceChunk(cache: cache, tokens: prompt, logits: .last)])[0]
        let b = try m.forward([SequenceChunk(cache: cache, tokens: Array(response.dropLast()), logits: .all)])[0]
        let V = m.vocabularySize
        let rows = [a] + stride(from: 0, to: b.count, by: V).map { Array(b[$0..<($0 + V)]) }
        var sum = 0.0
        for (i, row) in rows.enumerated() {
            let mx = row.max()!
            let lse = Double(mx) + log(row.reduce(0.0) { $0 + exp(Double($1 - mx)) })
            sum += lse - Double(row[response[i]])
        }
        return sum
    }

    func testPromptAttentionMatchesTrainingMasks() throws {
        let path = try TinyModel.write(dtype: .f32, seed: 11)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let m = try DecoderModel(gguf: try GGUFFile(path: path))
        let prompt = [5, 9, 14, 3, 22, 7, 40], response = [12, 31, 8, 19, 0]
        let example = SFTExample(tokens: prompt + response, labels: Array(repeating: ignoredLabel, count: prompt.count) + response,
                                 promptLength: prompt.count)
        var losses: [AttentionMask: Double] = [:]
        for mask in [AttentionMask.causal, .prefix, .mixed] {
            m.promptAttention = mask
            let ours = try responseLoss(m, prompt: prompt, response: response)
            let trainer = LlamaTrainer(parameters: LlamaParameters(model: m), attention: mask)
            let training = try trainer.loss([example]).sumLoss
            XCTAssertEqual(ours, training, accuracy: 1e-5 * abs(training), "\(mask)")
            losses[mask] = ours
            print("\(mask): inference \(ours), training \(training)")
        }
        // The masks differ, so the check above can tell them apart.
        XCTAssertGreaterThan(abs(losses[.prefix]! - losses[.causal]!), 1e-3)
        XCTAssertGreaterThan(abs(losses[.mixed]! - losses[.prefix]!), 1e-3)

        // Generation runs the prompt in one chunk whatever chunk size is asked for, so the answer does not depend on it.
        m.promptAttention = .prefix
        let g = Generator(model: m, tokenizer: nil, endTokenIDs: [])
        let p = GenerateParameters(maxNewTokens: 6)
        let whole = try g.generate([SequenceRequest(prompt: prompt, parameters: p)])[0].tokens
        let chunked = try g.generate([SequenceRequest(prompt: prompt, parameters: p)], chunkSize: 2)[0].tokens
        XCTAssertEqual(whole, chunked)
        m.promptAttention = .causal
        let causal = try g.generate([SequenceRequest(prompt: prompt, parameters: p)])[0].tokens
        print("prefix greedy \(whole), causal greedy \(causal)")
    }
}
