import Foundation
import XCTest
import CausalKernels
import CausalLM

/// T5 training (T5Trainer): gradients against central finite differences on tiny random T5s (every parameter tensor,
/// relu / gelu / gated-gelu, tied and untied heads), loss and gradient norm against Hugging Face's
/// T5ForConditionalGeneration on Tests/Fixtures/tiny/t5 (refs.json `sft`), AdamW steps, batch invariance, and
/// checkpoints (HF layout, reload, resume).
final class T5TrainingTests: XCTestCase {
    static let fixture = Fixtures.url("tiny/t5").path
    let pool = ThreadPool(threads: 2)

    struct RNG {
        var s: UInt64
        mutating func next() -> Float {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Double(s >> 40) / Double(1 << 24)) * 2 - 1
        }
    }

    func relErr(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(abs(b), 1e-30) }

    /// The fixture's SFT batch: its three encoder rows, labels [7, 8, 9, 1] each.
    func fixtureBatch() throws -> (batch: [Seq2SeqExample], loss: Double, gradNorm: Double) {
        let r = try XCTUnwrap(Fixtures.json("tiny/t5/refs.json") as? [String: Any])
        let rows = try XCTUnwrap(r["encoder_rows"] as? [[Int]])
        let sft = try XCTUnwrap(r["sft"] as? [String: Any])
        let labels = try XCTUnwrap(sft["labels"] as? [[Int]])
        return (zip(rows, labels).map { Seq2SeqExample(input: $0, labels: $1) },
                try XCTUnwrap(sft["loss"] as? Double), try XCTUnwrap(sft["grad_norm"] as? Double))
    }

    /// A tiny random T5: 8 buckets with max distance 12, so inputs of 9 tokens reach the logarithmic buckets.
    static func tinyConfig(_ ff: T5Config.FeedForward, tied: Bool, decoderLayers: Int = 2) -> T5Config {
        T5Config(vocabularySize: 37, modelDim: 16, headDim: 4, feedForwardDim: 24, encoderLayerCount: 2,
                 decoderLayerCount: decoderLayers, headCount: 2, relativeBuckets: 8, relativeMaxDistance: 12,
                 layerNormEps: 1e-6, feedForward: ff, tiedEmbeddings: tied, decoderStartTokenID: 0, eosTokenIDs: [1],
                 padTokenID: 0, contextLength: 64)
    }

    static func randomParameters(_ cfg: T5Config, seed: UInt64) -> T5Parameters {
        let p = T5Parameters(config: cfg)
        var rng = RNG(s: seed)
        for t in p.tensors {
            let v = p.values(t)
            let norm = t.shape.count == 1, table = t.name.hasSuffix("relative_attention_bias.weight")
            for i in 0..<v.count { v[i] = norm ? 1 + 0.2 * rng.next() : table ? rng.next() : 0.5 * rng.next() }
        }
        return p
    }

    static let tinyBatch = [
        Seq2SeqExample(input: [5, 17, 30, 3, 22, 7, 25, 9, 11], labels: [7, 8, 36, 2, 1]),
        Seq2SeqExample(input: [11, 12, 13], labels: [4, 1]),
        Seq2SeqExample(input: [33, 1, 19, 20, 20, 6], labels: [14, -100, 3, 1]),
    ]

    // MARK: Gradients

    /// d(summed loss)/d(parameter) of our fp32 backward against central differences of an independent Float64 forward
    /// (`T5Float64Reference`, straight loops over one example at a time) with step 1e-6, for 16 elements of every
    /// tensor: the shared embedding (for an untied head, elements of the rows the batch reads), both relative-position
    /// tables, every q/k/v/o of self- and cross-attention, the feed-forward matrices (wi, or wi_0 / wi_1, and wo),
    /// every layer norm, both final norms, and lm_head when untied. In Float64 a step of 1e-6 has truncation error
    /// ~1e-12 and rounding ~1e-10 and practically never crosses a ReLU kink, so the numeric gradient is exact to far
    /// below fp32's rounding; each tensor's sample must agree to 1e-4 relative (‖numeric − analytic‖ ≤ 1e-4 ‖analytic‖).
    /// The fp32 loss must equal the Float64 loss to 1e-5 relative.
    func testGradientsMatchFloat64FiniteDifferences() throws {
        let variants: [(T5Config.FeedForward, Bool, Int)] = [(.relu, true, 2), (.gatedGelu, false, 1), (.gelu, true, 1), (.gatedRelu, true, 1)]
        for (ff, tied, decLayers) in variants {
            let cfg = Self.tinyConfig(ff, tied: tied, decoderLayers: decLayers)
            let p = Self.randomParameters(cfg, seed: 11)
            let trainer = T5Trainer(parameters: p, pool: pool)
            let batch = Self.tinyBatch
            let loss = try trainer.forwardBackward(batch, lossScale: 1)    // the gradient of the summed loss
            XCTAssertEqual(loss.scoredTokens, 10)
            XCTAssertEqual(try trainer.loss(batch).sumLoss, loss.sumLoss)
            var ref = try T5Float64Reference(p)
            let refLoss = ref.summedLoss(batch)
            print(String(format: "[t5 gradcheck] %@ tied=%d: summed loss fp32 %.9f, float64 %.9f (rel %.2e)", "\(ff)", tied ? 1 : 0,
                         loss.sumLoss, refLoss, relErr(loss.sumLoss, refLoss)))
            XCTAssertLessThan(relErr(loss.sumLoss, refLoss), 1e-5, "\(ff): fp32 loss vs float64 loss")
            let used = Set(batch.flatMap { $0.input + ref.shiftRight($0.labels) + $0.labels.filter { $0 >= 0 } })
            var names: [String] = [], worstRel = 0.0
            for t in p.tensors {
                names.append(t.name)
                let analytic = trainer.gradients.values(t)
                var idx: [Int]
                if t.name == "shared.weight" && !tied {
                    idx = used.sorted().prefix(8).flatMap { row in [row * cfg.modelDim + 3, row * cfg.modelDim + 12] }
                } else {
                    let stride = max(1, t.count / 16)
                    idx = Array(Swift.stride(from: 0, to: t.count, by: stride))
                }
                var diff = 0.0, norm = 0.0, worst = (i: 0, num: 0.0, ana: 0.0)
                let h = 1e-6
                for i in idx {
                    let at = t.offset + i, x = ref.w[at]
                    ref.w[at] = x + h; let lp = ref.summedLoss(batch)
                    ref.w[at] = x - h; let lm = ref.summedLoss(batch)
                    ref.w[at] = x
                    let num = (lp - lm) / (2 * h), ana = Double(analytic[i])
                    if abs(num - ana) > abs(worst.num - worst.ana) { worst = (i, num, ana) }
                    diff += (num - ana) * (num - ana); norm += ana * ana
                }
                let rel = diff.squareRoot() / norm.squareRoot()
                worstRel = max(worstRel, rel)
                print(String(format: "[t5 gradcheck] %@ tied=%d %@: relative error %.2e over %d elements, |sample| %.3e (worst %d: numeric %.8f, analytic %.8f)",
                             "\(ff)", tied ? 1 : 0, t.name, rel, idx.count, norm.squareRoot(), worst.i, worst.num, worst.ana))
                XCTAssertGreaterThan(norm, 0, "\(ff) \(t.name): the sampled gradient is zero")
                XCTAssertLessThan(rel, 1e-4, "\(ff) \(t.name): worst element \(worst.i): numeric \(worst.num), analytic \(worst.ana)")
            }
            print(String(format: "[t5 gradcheck] %@ tied=%d: worst tensor relative error %.2e", "\(ff)", tied ? 1 : 0, worstRel))
            // Every parameter group is there, with HF's names.
            XCTAssertTrue(names.contains("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
            XCTAssertTrue(names.contains("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
            XCTAssertTrue(names.contains("decoder.block.0.layer.1.EncDecAttention.k.weight"))
            XCTAssertEqual(names.contains("lm_head.weight"), !tied)
            XCTAssertEqual(names.contains("encoder.block.1.layer.1.DenseReluDense.wi_1.weight"), ff == .gatedGelu || ff == .gatedRelu)
            // shared; per encoder layer 2 norms + q/k/v/o + FF; the table; final norm; the same for the decoder with
            // 3 norms and 8 attention matrices per layer; lm_head when untied.
            let ffCount = ff == .gatedGelu || ff == .gatedRelu ? 3 : 2
            XCTAssertEqual(names.count, 1 + 2 * (6 + ffCount) + 1 + 1 + decLayers * (11 + ffCount) + 1 + 1 + (tied ? 0 : 1))
        }
    }

    // MARK: Parity with Hugging Face

    /// HF's loss and gradient norm for the fixture batch (encoder rows right-padded with an attention mask in HF; ragged
    /// here): loss to 1e-6 relative and grad norm to 5e-6 (docs/training.md reports 1.8e-7 and 1.3e-6); the training loss equals the inference loss (T5Model.loss), and the training forward's
    /// logits are T5Model.forward's bit for bit.
    func testLossAndGradientNormMatchHF() throws {
        let (batch, refLoss, refNorm) = try fixtureBatch()
        let model = try T5Model(directory: Self.fixture, pool: pool)
        let trainer = T5Trainer(parameters: T5Parameters(model: model), pool: pool)
        let loss = try trainer.forwardBackward(batch)
        let norm = trainer.gradientNorm()
        let inference = try model.loss(batch).loss
        print(String(format: "tiny T5 sft: loss %.7f (HF %.7f, rel %.2e; inference %.7f, rel %.2e), grad norm %.6f (HF %.6f, rel %.2e)",
                     loss.meanLoss, refLoss, relErr(loss.meanLoss, refLoss), inference, relErr(loss.meanLoss, inference),
                     norm, refNorm, relErr(norm, refNorm)))
        XCTAssertEqual(loss.scoredTokens, 12)
        XCTAssertLessThan(relErr(loss.meanLoss, refLoss), 1e-6)
        XCTAssertLessThan(relErr(norm, refNorm), 5e-6)
        XCTAssertLessThan(relErr(loss.meanLoss, inference), 1e-12)
        // Per-tensor norms, for the record.
        for t in trainer.gradients.tensors where t.name.contains("relative_attention_bias") || t.name == "shared.weight" {
            let v = trainer.gradients.values(t)
            print("  grad norm \(t.name): \(v.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot())")
        }

        let logits = try trainer.logits(batch)
        for (i, ex) in batch.enumerated() {
            let cache = try model.makeCaches(encoderInputs: [ex.input])[0]
            let ref = try model.forward([SequenceChunk(cache: cache, tokens: model.decoderInput(forLabels: ex.labels), logits: .all)])[0]
            XCTAssertEqual(logits[i].map(\.bitPattern), ref.map(\.bitPattern), "example \(i): training logits differ from T5Model's")
        }
    }

    // MARK: Optimizer

    func testAdamWStepsReduceTheLoss() throws {
        let (batch, _, _) = try fixtureBatch()
        let params = try T5Parameters(directory: Self.fixture)
        let trainer = T5Trainer(parameters: params, pool: pool)
        let opt = AdamW(parameters: params, weightDecay: 0.01, pool: pool)
        let schedule = LearningRateSchedule(peak: 1e-3, warmupSteps: 1, totalSteps: 6)
        var losses: [Double] = []
        for step in 0..<6 {
            trainer.zeroGradients()
            let l = try trainer.forwardBackward(batch)
            losses.append(l.meanLoss)
            clipGradients(trainer.gradients, maxNorm: 1)
            XCTAssertLessThanOrEqual(trainer.gradientNorm(), 1.000001)
            opt.update(params, gradients: trainer.gradients, lr: schedule.lr(at: step))
        }
        losses.append(try trainer.loss(batch).meanLoss)
        print("tiny T5 AdamW losses: \(losses.map { String(format: "%.4f", $0) }.joined(separator: " "))")
        XCTAssertEqual(losses[1], losses[0], "the first step has learning rate 0 (warmup)")
        for s in 2..<losses.count { XCTAssertLessThan(losses[s], losses[s - 1], "step \(s)") }
        XCTAssertLessThan(losses.last!, 0.9 * losses[0])
        // Norm weights and the relative-position tables get no weight decay; a zero gradient leaves them alone.
        XCTAssertFalse(params.tensor("encoder.final_layer_norm.weight")!.decays)
        XCTAssertFalse(params.tensor("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")!.decays)
        XCTAssertTrue(params.tensor("shared.weight")!.decays)
    }

    /// Micro-batches accumulate to the gradient of one batch holding them all.
    func testGradientAccumulationEqualsOneBatch() throws {
        let p = Self.randomParameters(Self.tinyConfig(.relu, tied: true), seed: 3)
        let one = T5Trainer(parameters: p, pool: pool)
        let l1 = try one.forwardBackward(Self.tinyBatch)
        let two = T5Trainer(parameters: p, pool: pool)
        let l2 = try two.accumulate([[Self.tinyBatch[0]], [Self.tinyBatch[1], Self.tinyBatch[2]]])
        XCTAssertEqual(l1.scoredTokens, l2.scoredTokens)
        XCTAssertEqual(l1.meanLoss, l2.meanLoss, accuracy: 1e-12 * l1.meanLoss)
        let d = one.gradients.maxAbsDifference(two.gradients), m = one.gradients.buffer.map { abs($0) }.max()!
        print("t5 accumulation: max |difference| \(d) of max |gradient| \(m)")
        XCTAssertLessThan(d, 1e-5 * m)
    }

    // MARK: Batch invariance

    /// An example's loss is bitwise the same alone and in any batch; its gradient contribution too: a batch where the
    /// other examples are present but score nothing (all labels -100, so they send back exact zeros) gives bitwise
    /// the gradient of the example alone. The gradient of a batch of scored examples is the sum of theirs only to
    /// rounding: weight gradients are sums over the rows of all examples, and adding another example's nonzero terms
    /// rounds the sum differently.
    func testBatchInvariance() throws {
        for (ff, tied) in [(T5Config.FeedForward.relu, true), (.gatedGelu, false)] {
            let p = Self.randomParameters(Self.tinyConfig(ff, tied: tied), seed: 21)
            let batch = Self.tinyBatch
            let single = T5Trainer(parameters: p, pool: pool), oneThread = T5Trainer(parameters: p, pool: ThreadPool(threads: 1))
            let together = try single.loss(batch)
            let reversed = try single.loss(batch.reversed())
            for (i, ex) in batch.enumerated() {
                let alone = try single.loss([ex]).sequences[0]
                XCTAssertEqual(together.sequences[i].sumLoss.bitPattern, alone.sumLoss.bitPattern, "\(ff) example \(i) in the batch")
                XCTAssertEqual(reversed.sequences[batch.count - 1 - i].sumLoss.bitPattern, alone.sumLoss.bitPattern, "\(ff) example \(i), reversed batch")
                XCTAssertEqual(try oneThread.loss([ex]).sequences[0].sumLoss.bitPattern, alone.sumLoss.bitPattern, "\(ff) example \(i), one thread")
                XCTAssertEqual(alone.scoredTokens, ex.scoredLabelCount)
            }
            // Gradient contribution: example i with the others present but unscored, vs example i alone.
            var sum = [Float](repeating: 0, count: p.count)
            for (i, ex) in batch.enumerated() {
                single.zeroGradients()
                try single.forwardBackward([ex], lossScale: 1)
                let alone = Array(single.gradients.buffer)
                for j in 0..<p.count { sum[j] += alone[j] }
                var mixed = batch.map { Seq2SeqExample(input: $0.input, labels: $0.labels.map { _ in -100 }) }
                mixed[i] = ex
                single.zeroGradients()
                try single.forwardBackward(mixed, lossScale: 1)
                let inBatch = Array(single.gradients.buffer)
                let differing = zip(alone, inBatch).filter { $0.bitPattern != $1.bitPattern }.count
                XCTAssertEqual(differing, 0, "\(ff) example \(i): \(differing) gradient values differ in bits with unscored companions")
                // ... and on one thread.
                oneThread.zeroGradients()
                try oneThread.forwardBackward([ex], lossScale: 1)
                XCTAssertEqual(zip(alone, Array(oneThread.gradients.buffer)).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                               "\(ff) example \(i): the gradient depends on the thread count")
            }
            single.zeroGradients()
            try single.forwardBackward(batch, lossScale: 1)
            var d: Float = 0, m: Float = 0
            for j in 0..<p.count { d = max(d, abs(single.gradients.data[j] - sum[j])); m = max(m, abs(sum[j])) }
            print("t5 batch invariance (\(ff)): losses bitwise; batch gradient vs sum of single gradients: max |diff| \(d) of max |grad| \(m)")
            XCTAssertLessThan(d, 1e-5 * m)
        }
    }

    // MARK: Checkpoints

    /// HF layout on disk (the fixture's tensor names exactly), T5Model / ModelBundle load the checkpoint back with
    /// bitwise the trained parameters and logits, and a resumed run continues bit for bit.
    func testCheckpointRoundTripAndResume() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-t5-train-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (batch, _, _) = try fixtureBatch()
        let base = try T5Checkpoint.readConfigObject(directory: Self.fixture)

        func run(_ params: T5Parameters, _ opt: AdamW, steps: Range<Int>) throws {
            let trainer = T5Trainer(parameters: params, pool: pool)
            let schedule = LearningRateSchedule(peak: 1e-3, warmupSteps: 0, totalSteps: 4)
            for s in steps {
                trainer.zeroGradients()
                try trainer.forwardBackward(s % 2 == 0 ? Array(batch.prefix(2)) : [batch[2]])
                clipGradients(trainer.gradients, maxNorm: 1)
                opt.update(params, gradients: trainer.gradients, lr: schedule.lr(at: s))
            }
        }
        // 4 steps straight.
        let straight = try T5Parameters(directory: Self.fixture)
        try run(straight, AdamW(parameters: straight, weightDecay: 0.01, pool: pool), steps: 0..<4)
        // 2 steps, checkpoint, reload, 2 more.
        let first = try T5Parameters(directory: Self.fixture)
        let opt = AdamW(parameters: first, weightDecay: 0.01, pool: pool)
        try run(first, opt, steps: 0..<2)
        try T5Checkpoint.save(first, optimizer: opt, state: TrainingState(step: 2, totalSteps: 4, seed: 9, info: ["base_model": Self.fixture]),
                              to: dir, baseConfig: base)
        for f in ["model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + f), f)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") }, [], "temporary files left behind")

        // The file is HF's layout: the same tensor names, shapes and dtype as transformers' save_pretrained wrote.
        let ours = try SafetensorsFile(path: dir + "/model.safetensors"), hf = try SafetensorsFile(path: Self.fixture + "/model.safetensors")
        XCTAssertEqual(Set(ours.tensors.map(\.name)), Set(hf.tensors.map(\.name)))
        for t in hf.tensors {
            XCTAssertEqual(try ours.tensor(t.name).shape, t.shape, t.name)
            XCTAssertEqual(try ours.tensor(t.name).dtype, t.dtype, t.name)
        }
        let cfg = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as? [String: Any])
        XCTAssertEqual(cfg["architectures"] as? [String], ["T5ForConditionalGeneration"])
        XCTAssertEqual(cfg["feed_forward_proj"] as? String, "relu")
        XCTAssertEqual(cfg["initializer_factor"] as? Double, 8, "the base config's other keys are kept")
        // ... with their number types: transformers' T5Config refuses an integer where it declares a float.
        let text = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        for literal in [#""initializer_factor": 8.0"#, #""dropout_rate": 0.0"#, #""layer_norm_epsilon": 1e-06"#, #""d_model": 64"#] {
            XCTAssertTrue(text.contains(literal), "\(literal) in \(text)")
        }
        XCTAssertEqual(try T5Config(path: dir + "/config.json"), try T5Config(path: Self.fixture + "/config.json"))

        // Reloaded parameters are the trained ones, bit for bit; the reloaded model's logits are the trainer's.
        let back = try T5Checkpoint.load(directory: dir)
        XCTAssertEqual(back.maxAbsDifference(first), 0)
        XCTAssertEqual(zip(back.buffer, first.buffer).filter { $0.bitPattern != $1.bitPattern }.count, 0)
        let trained = try T5Trainer(parameters: first, pool: pool).logits(batch)
        let model = try T5Model(directory: dir, pool: pool)
        let bundle = try ModelBundle(path: dir)
        XCTAssertTrue(bundle.isEncoderDecoder)
        let bundled = try XCTUnwrap(bundle.model as? T5Model)
        for (i, ex) in batch.enumerated() {
            for m in [model, bundled] {
                let cache = try m.makeCaches(encoderInputs: [ex.input])[0]
                let l = try m.forward([SequenceChunk(cache: cache, tokens: m.decoderInput(forLabels: ex.labels), logits: .all)])[0]
                XCTAssertEqual(l.map(\.bitPattern), trained[i].map(\.bitPattern), "example \(i): logits after reload")
            }
        }

        // Resume: the optimizer state and step come back, and 2 more steps land where 4 straight steps did.
        let opt2 = AdamW(parameters: back, weightDecay: 0.01, pool: pool)
        let state = try T5Checkpoint.loadState(directory: dir, into: opt2)
        XCTAssertEqual(state, TrainingState(step: 2, totalSteps: 4, seed: 9, info: ["base_model": Self.fixture]))
        XCTAssertEqual(opt2.step, 2)
        XCTAssertEqual(opt2.m.maxAbsDifference(opt.m), 0); XCTAssertEqual(opt2.v.maxAbsDifference(opt.v), 0)
        try run(back, opt2, steps: 2..<4)
        XCTAssertEqual(zip(back.buffer, straight.buffer).filter { $0.bitPattern != $1.bitPattern }.count, 0, "resumed run differs")

        // A LLaMA trainer's optimizer file is refused by name.
        let moments = AdamW(parameters: LlamaParameters(config: LlamaConfig(vocabularySize: 8, hiddenSize: 4, intermediateSize: 4, layerCount: 1,
                                                                            headCount: 1, kvHeadCount: 1, contextLength: 8), tiedEmbeddings: true))
        let llamaDir = dir + "/llama"
        try LlamaCheckpoint.save(LlamaParameters(config: LlamaConfig(vocabularySize: 8, hiddenSize: 4, intermediateSize: 4, layerCount: 1,
                                                                     headCount: 1, kvHeadCount: 1, contextLength: 8), tiedEmbeddings: true),
                                 optimizer: moments, state: TrainingState(step: 0, totalSteps: 1, seed: 0), to: llamaDir)
        XCTAssertThrowsError(try T5Checkpoint.loadState(directory: llamaDir, into: AdamW(parameters: back))) { e in
            XCTAssertTrue("\(e)".contains("not a T5 trainer's"), "\(e)")
        }
    }

    /// Untied, gated checkpoints (lm_head.weight, wi_0 / wi_1) round-trip through T5Model too.
    func testUntiedGatedCheckpointLoads() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-t5-gated-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cfg = Self.tinyConfig(.gatedGelu, tied: false)
        let p = Self.randomParameters(cfg, seed: 5)
        try T5Checkpoint.save(p, to: dir)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as? [String: Any])
        XCTAssertEqual(json["feed_forward_proj"] as? String, "gated-gelu")
        XCTAssertEqual(json["dense_act_fn"] as? String, "gelu_new")
        XCTAssertEqual(json["tie_word_embeddings"] as? Bool, false)
        XCTAssertEqual(try T5Config(path: dir + "/config.json"), cfg)
        let names = Set(try SafetensorsFile(path: dir + "/model.safetensors").tensors.map(\.name))
        XCTAssertTrue(names.isSuperset(of: ["lm_head.weight", "decoder.block.1.layer.2.DenseReluDense.wi_0.weight",
                                            "decoder.block.1.layer.2.DenseReluDense.wi_1.weight"]))
        let model = try T5Model(directory: dir, pool: pool)
        XCTAssertEqual(T5Parameters(model: model).maxAbsDifference(p), 0)
        let trainer = T5Trainer(parameters: p, pool: pool)
        let logits = try trainer.logits(Self.tinyBatch)
        for (i, ex) in Self.tinyBatch.enumerated() {
            let cache = try model.makeCaches(encoderInputs: [ex.input])[0]
            let l = try model.forward([SequenceChunk(cache: cache, tokens: cfg.decoderInput(forLabels: ex.labels), logits: .all)])[0]
            XCTAssertEqual(l.map(\.bitPattern), logits[i].map(\.bitPattern), "example \(i)")
        }
        // The same logits; the two losses differ only in rounding: T5Model.loss takes logit − max in fp32 before exp,
        // the trainer's cross-entropy in double.
        XCTAssertLessThan(relErr(try trainer.loss(Self.tinyBatch).meanLoss, try model.loss(Self.tinyBatch).loss), 1e-9)
    }

    func testBadBatchesAreNamed() throws {
        let trainer = T5Trainer(parameters: Self.randomParameters(Self.tinyConfig(.relu, tied: true), seed: 1), pool: pool)
        XCTAssertThrowsError(try trainer.loss([])) { XCTAssertTrue("\($0)".contains("empty batch"), "\($0)") }
        XCTAssertThrowsError(try trainer.loss([Seq2SeqExample(input: [3], labels: [1]), Seq2SeqExample(input: [], labels: [1])])) {
            XCTAssertTrue("\($0)".contains("example 1 of the batch: the input has no tokens"), "\($0)")
        }
        XCTAssertThrowsError(try trainer.loss([Seq2SeqExample(input: [3], labels: [])])) {
            XCTAssertTrue("\($0)".contains("example 0 of the batch: there are no labels"), "\($0)")
        }
        XCTAssertThrowsError(try trainer.loss([Seq2SeqExample(input: [3, 37], labels: [1])])) {
            XCTAssertEqual($0 as? CausalError, .badTokenID(id: 37, vocabularySize: 37))
        }
        XCTAssertThrowsError(try trainer.forwardBackward([Seq2SeqExample(input: [3], labels: [-100, -100])])) {
            XCTAssertTrue("\($0)".contains("no label of the batch is scored"), "\($0)")
        }
    }
}

/// An independent T5 forward in Float64 (straight loops, one example at a time, no padding), over a copy of a
/// `T5Parameters` buffer: the oracle of the gradient check. It follows modeling_t5: RMS norms without mean or bias,
/// unscaled scores plus the first layer's relative-position bias (bidirectional buckets in the encoder, causal in the
/// decoder) in every layer, cross-attention without bias, relu / gelu / gelu_new feed-forward (gated or not), the
/// tied head's input scaled by d_model^-0.5, summed cross-entropy over labels that are not -100.
/// Independent of the code under test: the relative-position buckets come from transformers' own function
/// (Tests/Fixtures/tiny/t5/relative_buckets.json) and the decoder input is transformers' `_shift_right` rule written
/// out here, not T5Config.relativeBucket / decoderInput.
struct T5Float64Reference {
    let cfg: T5Config
    var w: [Double]
    let at: [String: Int]
    let encoderBuckets: [Int], decoderBuckets: [Int], firstRelative: Int

    init(_ p: T5Parameters) throws {
        cfg = p.config
        w = p.buffer.map(Double.init)
        at = Dictionary(uniqueKeysWithValues: p.tensors.map { ($0.name, $0.offset) })
        let file = try XCTUnwrap(Fixtures.json("tiny/t5/relative_buckets.json") as? [String: Any])
        let tables = try XCTUnwrap(file["tables"] as? [[String: Any]])
        func table(bidirectional: Bool) throws -> [Int] {
            let t = try XCTUnwrap(tables.first { $0["num_buckets"] as? Int == p.config.relativeBuckets
                && $0["max_distance"] as? Int == p.config.relativeMaxDistance && $0["bidirectional"] as? Bool == bidirectional },
                "no transformers bucket table for \(p.config.relativeBuckets) / \(p.config.relativeMaxDistance)")
            return try XCTUnwrap(t["buckets"] as? [Int])
        }
        encoderBuckets = try table(bidirectional: true)
        decoderBuckets = try table(bidirectional: false)
        firstRelative = try XCTUnwrap(tables.first?["first_relative_position"] as? Int)
    }

    /// transformers' bucket of relative position key - query.
    func bucket(_ relative: Int, bidirectional: Bool) -> Int {
        (bidirectional ? encoderBuckets : decoderBuckets)[relative - firstRelative]
    }

    /// transformers' `_shift_right`: the decoder start id, then the labels without the last, -100 replaced by pad.
    func shiftRight(_ labels: [Int]) -> [Int] {
        var out = [cfg.decoderStartTokenID]
        for l in labels.dropLast() { out.append(l == -100 ? cfg.padTokenID : l) }
        return out
    }

    typealias Rows = [[Double]]

    func rms(_ x: Rows, _ name: String) -> Rows {
        let o = at[name]!
        return x.map { r in
            let inv = 1 / (r.reduce(0) { $0 + $1 * $1 } / Double(r.count) + cfg.layerNormEps).squareRoot()
            return r.indices.map { w[o + $0] * r[$0] * inv }
        }
    }

    /// x (n, in) · Wᵀ, W (out, in) at `name`.
    func linear(_ x: Rows, _ name: String, out: Int) -> Rows {
        let o = at[name]!, n = x.first?.count ?? 0
        return x.map { r in (0..<out).map { j in (0..<n).reduce(0.0) { $0 + w[o + j * n + $1] * r[$1] } } }
    }

    func attention(_ x: Rows, _ kv: Rows, _ p: String, bias: String?, bidirectional: Bool, causal: Bool) -> Rows {
        let (H, D, I) = (cfg.headCount, cfg.headDim, cfg.innerDim)
        let q = linear(x, p + "q.weight", out: I), k = linear(kv, p + "k.weight", out: I), v = linear(kv, p + "v.weight", out: I)
        var att = Rows(repeating: [Double](repeating: 0, count: I), count: x.count)
        for i in 0..<x.count {
            for h in 0..<H {
                let keys = causal ? i + 1 : kv.count
                var s = (0..<keys).map { j in (0..<D).reduce(0.0) { $0 + q[i][h * D + $1] * k[j][h * D + $1] } }
                if let bias {
                    for j in 0..<keys { s[j] += w[at[bias]! + bucket(j - i, bidirectional: bidirectional) * H + h] }
                }
                let m = s.max()!
                let e = s.map { exp($0 - m) }, z = e.reduce(0, +)
                for j in 0..<keys { for d in 0..<D { att[i][h * D + d] += e[j] / z * v[j][h * D + d] } }
            }
        }
        return linear(att, p + "o.weight", out: cfg.modelDim)
    }

    func act(_ x: Double) -> Double {
        switch cfg.feedForward {
        case .relu, .gatedRelu: return max(x, 0)
        case .gelu: return 0.5 * x * (1 + erf(x / 2.0.squareRoot()))
        case .gatedGelu: return 0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
        }
    }

    func feedForward(_ x: Rows, _ p: String) -> Rows {
        let F = cfg.feedForwardDim
        var hidden: Rows
        if cfg.feedForward == .gatedGelu || cfg.feedForward == .gatedRelu {
            let a0 = linear(x, p + "wi_0.weight", out: F), a1 = linear(x, p + "wi_1.weight", out: F)
            hidden = zip(a0, a1).map { r0, r1 in zip(r0, r1).map { act($0) * $1 } }
        } else {
            hidden = linear(x, p + "wi.weight", out: F).map { $0.map(act) }
        }
        return linear(hidden, p + "wo.weight", out: cfg.modelDim)
    }

    static func add(_ a: Rows, _ b: Rows) -> Rows { zip(a, b).map { zip($0, $1).map(+) } }

    func embed(_ tokens: [Int]) -> Rows {
        let o = at["shared.weight"]!, C = cfg.modelDim
        return tokens.map { t in (0..<C).map { w[o + t * C + $0] } }
    }

    func summedLoss(_ batch: [Seq2SeqExample]) -> Double {
        let C = cfg.modelDim, V = cfg.vocabularySize
        let encTable = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        let decTable = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        var total = 0.0
        for ex in batch {
            var x = embed(ex.input)
            for l in 0..<cfg.encoderLayerCount {
                let p = "encoder.block.\(l).layer."
                let n = rms(x, p + "0.layer_norm.weight")
                x = Self.add(x, attention(n, n, p + "0.SelfAttention.", bias: encTable, bidirectional: true, causal: false))
                x = Self.add(x, feedForward(rms(x, p + "1.layer_norm.weight"), p + "1.DenseReluDense."))
            }
            let e = rms(x, "encoder.final_layer_norm.weight")
            x = embed(shiftRight(ex.labels))
            for l in 0..<cfg.decoderLayerCount {
                let p = "decoder.block.\(l).layer."
                let n = rms(x, p + "0.layer_norm.weight")
                x = Self.add(x, attention(n, n, p + "0.SelfAttention.", bias: decTable, bidirectional: false, causal: true))
                x = Self.add(x, attention(rms(x, p + "1.layer_norm.weight"), e, p + "1.EncDecAttention.", bias: nil, bidirectional: false, causal: false))
                x = Self.add(x, feedForward(rms(x, p + "2.layer_norm.weight"), p + "2.DenseReluDense."))
            }
            var out = rms(x, "decoder.final_layer_norm.weight")
            if cfg.scaleDecoderOutputs { out = out.map { $0.map { $0 / Double(C).squareRoot() } } }
            let logits = linear(out, cfg.tiedEmbeddings ? "shared.weight" : "lm_head.weight", out: V)
            for (t, label) in ex.labels.enumerated() where label != ignoredLabel {
                let m = logits[t].max()!
                total += m + log(logits[t].reduce(0) { $0 + exp($1 - m) }) - logits[t][label]
            }
        }
        return total
    }
}
