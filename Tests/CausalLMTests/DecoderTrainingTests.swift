import Foundation
import XCTest
import CausalLM
import CausalKernels

/// The decoder trainer on every family's block options, by finite differences (full fine-tuning and LoRA), and the
/// properties that make LoRA/QLoRA training trustworthy: activation checkpointing changes nothing, dropout masks are
/// reproducible, a quantized frozen base gives the gradients of its dequantized fp32 copy.
extension TrainingGradTests {
    /// Tiny configurations with each family's options (DecoderConfig), the block the inference engine runs.
    static func familyConfigs() -> [(String, DecoderConfig)] {
        func base(headDim: Int? = nil) -> DecoderConfig {
            DecoderConfig(vocabularySize: 29, hiddenSize: 16, intermediateSize: 24, layerCount: 2, headCount: 4,
                          kvHeadCount: 2, headDim: headDim, ropeTheta: 10000, rmsNormEps: 1e-5, contextLength: 64)
        }
        var qwen2 = base(); qwen2.architecture = "qwen2"; qwen2.attentionBias = true; qwen2.ropeStyle = .half; qwen2.ropeTheta = 1e6
        var qwen3 = base(headDim: 8); qwen3.architecture = "qwen3"; qwen3.qkNorm = true; qwen3.ropeStyle = .half
        var gemma = base(headDim: 8); gemma.architecture = "gemma3"
        gemma.postNorms = true; gemma.qkNorm = true; gemma.activation = .geluTanh; gemma.embeddingScale = 4
        gemma.attentionScale = 0.3; gemma.slidingWindow = 8; gemma.slidingLayers = [true, false]; gemma.localRopeTheta = 100
        gemma.ropeStyle = .half; gemma.finalLogitSoftcap = 5
        var llama3 = base(); llama3.ropeScaling = .llama3(factor: 8, lowFrequencyFactor: 1, highFrequencyFactor: 4, originalContext: 16)
        return [("qwen2", qwen2), ("qwen3", qwen3), ("gemma3", gemma), ("llama3", llama3)]
    }

    static func randomParameters(_ cfg: DecoderConfig, seed: UInt64) -> DecoderParameters {
        let p = DecoderParameters(config: cfg, tiedEmbeddings: cfg.architecture == "gemma3")
        var rng = RNG(s: seed)
        for t in p.tensors {
            let v = p.values(t)
            let isBias = t.name.hasSuffix(".bias")
            for i in 0..<v.count { v[i] = t.decays ? rng.next() * 0.5 : isBias ? 0.3 * rng.next() : 1 + 0.2 * rng.next() }
        }
        return p
    }

    static let familyBatch = [SFTExample(tokens: [1, 5, 9, 3, 22, 7], labels: [-100, -100, -100, 3, 22, 7], promptLength: 3),
                              SFTExample(tokens: [4, 4, 28, 0], labels: [-100, 4, 28, 0], promptLength: 2)]

    func testFamilyBlocksFullFineTuningGradients() throws {
        for (name, cfg) in Self.familyConfigs() {
            let p = Self.randomParameters(cfg, seed: 11)
            let trainer = DecoderTrainer(parameters: p, pool: pool)
            let batch = Self.familyBatch
            let loss = try trainer.forwardBackward(batch, lossScale: 1)
            XCTAssertEqual(try trainer.loss(batch).sumLoss, loss.sumLoss, accuracy: 1e-9)
            // The trainer's forward is the inference forward: the same logits at the last position of each sequence.
            let model = DecoderModel(parameters: p, pool: pool)
            let logits = try model.forward(batch.map { SequenceChunk(cache: model.makeCache(capacity: 16), tokens: $0.tokens) })
            var sum = 0.0
            for (b, ex) in batch.enumerated() {
                // Loss of the last scored position recomputed from the inference logits of the prefix that ends there.
                let t = ex.tokens.count - 2
                let prefix = try model.forward([SequenceChunk(cache: model.makeCache(capacity: 16), tokens: Array(ex.tokens[...t]))])[0]
                let mx = prefix.max()!
                sum += log(prefix.reduce(0) { $0 + exp(Double($1 - mx)) }) + Double(mx) - Double(prefix[ex.tokens[t + 1]])
                XCTAssertEqual(logits[b].count, cfg.vocabularySize)
            }
            let lastRows = try trainer.loss(batch.map { ex in
                var labels = [Int](repeating: -100, count: ex.tokens.count); labels[ex.tokens.count - 1] = ex.tokens.last!
                return SFTExample(tokens: ex.tokens, labels: labels, promptLength: ex.promptLength)
            })
            XCTAssertEqual(lastRows.sumLoss, sum, accuracy: 1e-4 * abs(sum), "\(name): training loss vs inference logits")
            for t in p.tensors {
                var values = Array(p.values(t))
                let analytic = Array(trainer.parameterGradients!.values(t))
                check("\(name) \(t.name)", &values, analytic: analytic, eps: 1e-2, tol: 2e-2, samples: 8) { vals in
                    let dst = p.values(t)
                    let saved = Array(dst)
                    for i in 0..<vals.count { dst[i] = vals[i] }
                    defer { for i in 0..<saved.count { dst[i] = saved[i] } }
                    return try! trainer.loss(batch).sumLoss
                }
            }
        }
    }

    static func randomAdapter(_ cfg: DecoderConfig, rank: Int = 2, dropout: Double = 0, seed: UInt64) throws -> LoRAAdapter {
        let a = try LoRAAdapter(config: LoRAConfig(rank: rank, alpha: 3, dropout: dropout), model: cfg)
        var rng = RNG(s: seed)
        for i in 0..<a.count { a.data[i] = 0.4 * rng.next() }
        return a
    }

    func testFamilyBlocksLoRAGradients() throws {
        for (name, cfg) in Self.familyConfigs() {
            let p = Self.randomParameters(cfg, seed: 12)
            let base = DecoderModel(parameters: p, pool: pool)
            let adapter = try Self.randomAdapter(cfg, seed: 13)
            let trainer = try DecoderTrainer(base: base, adapter: adapter, pool: pool)
            let batch = Self.familyBatch
            _ = try trainer.forwardBackward(batch, lossScale: 1)
            let grads = try XCTUnwrap(trainer.adapterGradients)
            for s in adapter.slots {
                for isB in [false, true] {
                    let count = isB ? s.outDim * s.rank : s.rank * s.inDim
                    let ptr = isB ? adapter.b(s) : adapter.a(s), g = isB ? grads.b(s) : grads.a(s)
                    var values = Array(UnsafeBufferPointer(start: ptr, count: count))
                    check("\(name) lora \(s.layer).\(s.target.rawValue).\(isB ? "B" : "A")", &values,
                          analytic: Array(UnsafeBufferPointer(start: g, count: count)), eps: 1e-2, tol: 2e-2, samples: 6) { vals in
                        let saved = Array(UnsafeBufferPointer(start: ptr, count: count))
                        for i in 0..<count { ptr[i] = vals[i] }
                        defer { for i in 0..<count { ptr[i] = saved[i] } }
                        return try! trainer.loss(batch).sumLoss
                    }
                }
            }
            // The base is frozen: its values are untouched by a step.
            let before = Array(p.buffer)
            let opt = AdamW(parameters: adapter, weightDecay: 0.1, pool: pool)
            opt.update(adapter, gradients: trainer.gradients, lr: 1e-2)
            XCTAssertEqual(Array(p.buffer), before, "\(name): the base changed")
        }
    }

    /// Checkpointing recomputes each block in the backward, with the same dropout masks: gradients bit for bit.
    func testCheckpointingAndDropoutAreExact() throws {
        for (name, cfg) in Self.familyConfigs() {
            let p = Self.randomParameters(cfg, seed: 14)
            let base = DecoderModel(parameters: p, pool: pool)
            func grads(checkpoint: Bool, dropout: Double, seed: UInt64 = 5) throws -> [Float] {
                let adapter = try Self.randomAdapter(cfg, dropout: dropout, seed: 15)
                let t = try DecoderTrainer(base: base, adapter: adapter, pool: pool)
                t.checkpointActivations = checkpoint
                t.dropoutSeed = seed
                _ = try t.forwardBackward(Self.familyBatch)
                return Array(UnsafeBufferPointer(start: t.gradients.data, count: t.gradients.count))
            }
            let plain = try grads(checkpoint: false, dropout: 0.2), ckpt = try grads(checkpoint: true, dropout: 0.2)
            XCTAssertEqual(plain.map(\.bitPattern), ckpt.map(\.bitPattern), "\(name): checkpointing changed the LoRA gradients")
            XCTAssertNotEqual(plain, try grads(checkpoint: false, dropout: 0), "\(name): dropout had no effect")
            XCTAssertNotEqual(plain, try grads(checkpoint: false, dropout: 0.2, seed: 6), "\(name): the dropout seed had no effect")
            XCTAssertEqual(plain, try grads(checkpoint: false, dropout: 0.2), "\(name): dropout masks are not reproducible")
            // Full fine-tuning too.
            let full = DecoderTrainer(parameters: p, pool: pool), fullCkpt = DecoderTrainer(parameters: p, pool: pool)
            fullCkpt.checkpointActivations = true
            _ = try full.forwardBackward(Self.familyBatch); _ = try fullCkpt.forwardBackward(Self.familyBatch)
            XCTAssertEqual(Array(full.parameterGradients!.buffer).map(\.bitPattern), Array(fullCkpt.parameterGradients!.buffer).map(\.bitPattern),
                           "\(name): checkpointing changed the full fine-tuning gradients")
        }
    }

    /// QLoRA: a Q8_0 / Q4_1 base left quantized gives the gradients of its fp32 dequantized copy (the products differ
    /// only in summation order).
    func testQuantizedBaseMatchesItsDequantizedCopy() throws {
        for dtype in [DType.q8_0, .q4_1] {
            let path = try TinyModel.write(dtype: dtype)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let quantized = try DecoderModel(gguf: try GGUFFile(path: path), pool: pool)
            let dequantized = DecoderModel(parameters: DecoderParameters(model: quantized), pool: pool)
            let batch = [SFTExample(tokens: [3, 40, 41, 42, 7, 9, 60], labels: [-100, -100, 41, 42, 7, 9, 60], promptLength: 2),
                         SFTExample(tokens: [5, 6, 7], labels: [-100, 6, 7], promptLength: 1)]
            var results: [([Float], Double)] = []
            for base in [quantized, dequantized] {
                let adapter = try Self.randomAdapter(quantized.config, rank: 4, seed: 16)
                let t = try DecoderTrainer(base: base, adapter: adapter, pool: pool)
                let l = try t.forwardBackward(batch)
                results.append((Array(UnsafeBufferPointer(start: t.gradients.data, count: t.gradients.count)), l.meanLoss))
            }
            let (a, b) = (results[0].0, results[1].0)
            var d = 0.0, n = 0.0
            for i in 0..<a.count { d += Double(a[i] - b[i]) * Double(a[i] - b[i]); n += Double(b[i]) * Double(b[i]) }
            print(String(format: "qlora %@: loss %.7f vs %.7f, gradients relative difference %.2e", dtype.name, results[0].1, results[1].1, (d / n).squareRoot()))
            XCTAssertEqual(results[0].1, results[1].1, accuracy: 1e-5 * results[1].1)
            XCTAssertLessThan((d / n).squareRoot(), 1e-5, "\(dtype.name)")
        }
    }
}
