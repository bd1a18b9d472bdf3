import Foundation
import XCTest
import CausalKernels
import CausalLM

/// Masked-LM training of BERT (BertMLMTrainer): loss, masked-token logits and every parameter's gradient against
/// transformers' BertForMaskedLM on Tests/Fixtures/mlm (fp32 and float64 runs, make_mlm_refs.py); the training
/// forward against the inference BertModel; finite differences under the mixed masks; the mixed masks never let a
/// head read the other side; BERT's 80/10/10 masking (rates, special tokens, determinism); checkpoints (reload,
/// resume) and bad input named.
final class BertMLMTests: XCTestCase {
    static let modelDir = Fixtures.url("mlm/model").path
    let pool = ThreadPool(threads: 2)

    func refs() throws -> [String: Any] { try XCTUnwrap(Fixtures.json("mlm/refs.json") as? [String: Any]) }

    func fixtureBatch() throws -> [MaskedSequence] {
        let batch = try XCTUnwrap(refs()["batch"] as? [[String: Any]])
        return try batch.map { MaskedSequence(input: try XCTUnwrap($0["input_ids"] as? [Int]), labels: try XCTUnwrap($0["labels"] as? [Int])) }
    }

    func relNormDiff(_ a: UnsafeBufferPointer<Float>, _ b: UnsafeBufferPointer<Float>) -> Double {
        var d = 0.0, n = 0.0
        for i in 0..<a.count { d += pow(Double(a[i]) - Double(b[i]), 2); n += pow(Double(b[i]), 2) }
        return (d / max(n, 1e-300)).squareRoot()
    }

    // MARK: Parity with transformers

    func testLossGradientsAndLogitsMatchTransformers() throws {
        let p = try BertParameters(directory: Self.modelDir)
        XCTAssertFalse(p.headInitialized, "the fixture is a BertForMaskedLM: its head is read, not initialised")
        let trainer = BertMLMTrainer(parameters: p, pool: pool)
        let batch = try fixtureBatch()
        let r = try refs()
        let loss = try trainer.forwardBackward(batch)
        let hf32 = try XCTUnwrap(r["loss_fp32"] as? Double), hf64 = try XCTUnwrap(r["loss_fp64"] as? Double)
        print("MLM loss: causal \(loss.meanLoss), transformers fp32 \(hf32), float64 \(hf64)")
        XCTAssertEqual(loss.scoredTokens, (r["logits_fp32"] as? [Any])?.count)
        XCTAssertLessThan(abs(loss.meanLoss - hf32) / hf32, 1e-4)
        XCTAssertLessThan(abs(loss.meanLoss - hf64) / hf64, 1e-4)

        var worst32 = 0.0, worst64 = 0.0
        for (file, tag) in [("mlm/grads.safetensors", "fp32"), ("mlm/grads64.safetensors", "fp64")] {
            let f = try SafetensorsFile(path: Fixtures.url(file).path)
            XCTAssertEqual(Set(f.tensors.map(\.name)), Set(p.tensors.map(\.name)), "one gradient per parameter, same names")
            func norm(_ a: UnsafeBufferPointer<Float>) -> Double { a.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }
            var largest = 0.0
            for t in p.tensors {
                let st = try f.tensor(t.name)
                largest = max(largest, norm(UnsafeBufferPointer(start: f.data(st).assumingMemoryBound(to: Float.self), count: t.count)))
            }
            for t in p.tensors {
                let st = try f.tensor(t.name)
                XCTAssertEqual(st.shape, t.shape, t.name)
                let ref = UnsafeBufferPointer(start: f.data(st).assumingMemoryBound(to: Float.self), count: t.count)
                let ours = UnsafeBufferPointer(trainer.gradients.values(t))
                // The key biases get no gradient in exact arithmetic (softmax is invariant to adding q·b to every
                // score of a row): both sides are rounding noise there, so they are held to being that small
                // (1e-6 of the largest gradient) instead of to each other.
                if t.name.hasSuffix("attention.self.key.bias") {
                    XCTAssertLessThan(norm(ref), 1e-6 * largest, "\(t.name) (\(tag)): reference not ~0")
                    XCTAssertLessThan(norm(ours), 1e-6 * largest, "\(t.name) (\(tag)): gradient \(norm(ours)) not ~0 (largest tensor norm \(largest))")
                    continue
                }
                let d = relNormDiff(ours, ref)
                if tag == "fp32" { worst32 = max(worst32, d) } else { worst64 = max(worst64, d) }
                XCTAssertLessThan(d, 1e-4, "\(t.name) (\(tag)): relative difference \(d)")
            }
        }
        print("MLM gradients: worst tensor relative difference \(worst32) (transformers fp32), \(worst64) (float64)")

        // Masked-token logits.
        let logits = try trainer.logits(batch)
        let V = p.config.vocabularySize
        var worst = 0.0
        for (tag, key) in [("fp32", "logits_fp32"), ("fp64", "logits_fp64")] {
            let rows = try XCTUnwrap(r[key] as? [[String: Any]])
            for row in rows {
                let s = try XCTUnwrap(row["sequence"] as? Int), i = try XCTUnwrap(row["position"] as? Int)
                let ref = try XCTUnwrap(row["logits"] as? [Double])
                let ours = logits[s][(i * V)..<((i + 1) * V)].map(Double.init)
                let scale = ref.map(abs).max()!
                let d = zip(ours, ref).map { abs($0 - $1) }.max()! / scale
                worst = max(worst, d)
                XCTAssertLessThan(d, 1e-4, "logits of sequence \(s) position \(i) (\(tag))")
            }
        }
        print("MLM masked-token logits: worst max-abs difference / max |logit| \(worst)")
    }

    /// The bidirectional training forward computes the inference model's last hidden states.
    func testTrainingForwardEqualsInferenceModel() throws {
        let p = try BertParameters(directory: Self.modelDir)
        let trainer = BertMLMTrainer(parameters: p, pool: pool)
        let batch = try fixtureBatch()
        let ours = try trainer.hiddenStates(batch)
        let model = try BertModel(directory: Self.modelDir, pool: pool)
        let ref = try model.lastHidden(batch.map(\.input))
        for (a, b) in zip(ours, ref) {
            XCTAssertEqual(a.count, b.count)
            let d = zip(a, b).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(d, 1e-5, "training forward vs BertModel")
        }
    }

    // MARK: Masks

    /// A tiny random model whose value projection is zero for the heads `silent` picks, so only the other heads carry
    /// information between positions.
    func silencedModel(layers: Int, silent: (Int, Int) -> Bool) throws -> BertParameters {
        let cfg = BertConfig(vocabularySize: 40, hiddenSize: 16, layerCount: layers, headCount: 4, intermediateSize: 24,
                             maxPositions: 32)
        let p = BertParameters(initializing: BertMLMArchitecture(config: cfg, initializerRange: 0.3), seed: 5)
        let D = cfg.headDim
        for l in 0..<layers {
            let w = try XCTUnwrap(p.tensor("bert.encoder.layer.\(l).attention.self.value.weight"))
            let b = try XCTUnwrap(p.tensor("bert.encoder.layer.\(l).attention.self.value.bias"))
            for h in 0..<cfg.headCount where silent(l, h) {
                for r in (h * D)..<((h + 1) * D) {
                    for c in 0..<cfg.hiddenSize { p.values(w)[r * cfg.hiddenSize + c] = 0 }
                    p.values(b)[r] = 0
                }
            }
        }
        return p
    }

    /// Logits rows of `a` and `b` (T, V) equal bit for bit at the positions in `rows`.
    func assertRowsEqual(_ a: [Float], _ b: [Float], rows: Range<Int>, V: Int, _ what: String) {
        for i in rows { XCTAssertEqual(Array(a[(i * V)..<((i + 1) * V)]), Array(b[(i * V)..<((i + 1) * V)]), "\(what): position \(i)") }
    }

    func testMixedMasksNeverReadTheOtherSide() throws {
        let seq = [2, 11, 25, 7, 30, 14, 9, 33, 3]
        let T = seq.count, cut = 4
        var later = seq, earlier = seq
        for j in (cut + 1)..<T { later[j] = (seq[j] + 7) % 35 + 5 }      // tokens after `cut` changed
        for j in 0..<cut { earlier[j] = (seq[j] + 11) % 35 + 5 }         // tokens before `cut` changed
        func logits(_ p: BertParameters, _ att: BertAttention, _ ids: [Int]) throws -> [Float] {
            try BertMLMTrainer(parameters: p, attention: att, pool: pool)
                .logits([MaskedSequence(input: ids, labels: Array(repeating: -100, count: ids.count))])[0]
        }
        let V = 40
        // By head: forward heads (h < 2) alone carry information -> position i never reads a later token, in
        // either of 2 layers; backward heads alone -> never an earlier one.
        let fwd = try silencedModel(layers: 2) { _, h in h >= 2 }
        assertRowsEqual(try logits(fwd, .mixed(byLayer: false), seq), try logits(fwd, .mixed(byLayer: false), later),
                        rows: 0..<(cut + 1), V: V, "forward heads")
        let bwd = try silencedModel(layers: 2) { _, h in h < 2 }
        assertRowsEqual(try logits(bwd, .mixed(byLayer: false), seq), try logits(bwd, .mixed(byLayer: false), earlier),
                        rows: cut..<T, V: V, "backward heads")
        // By layer: one layer, which reads forward with every head.
        let one = try silencedModel(layers: 1) { _, _ in false }
        assertRowsEqual(try logits(one, .mixed(byLayer: true), seq), try logits(one, .mixed(byLayer: true), later),
                        rows: 0..<(cut + 1), V: V, "forward layer")
        // Two layers by layer: the second reads backward; with the first layer's heads silenced nothing reads forward.
        let second = try silencedModel(layers: 2) { l, _ in l == 0 }
        assertRowsEqual(try logits(second, .mixed(byLayer: true), seq), try logits(second, .mixed(byLayer: true), earlier),
                        rows: cut..<T, V: V, "backward layer")
        // The checks can fail: bidirectionally, and through the other heads, the changed tokens do reach those rows.
        XCTAssertNotEqual(try logits(fwd, .bidirectional, seq)[0..<V], try logits(fwd, .bidirectional, later)[0..<V])
        XCTAssertNotEqual(try logits(bwd, .mixed(byLayer: false), seq)[0..<V], try logits(bwd, .mixed(byLayer: false), later)[0..<V])
        XCTAssertNotEqual(try logits(fwd, .mixed(byLayer: false), seq)[((T - 1) * V)..<(T * V)],
                          try logits(fwd, .mixed(byLayer: false), earlier)[((T - 1) * V)..<(T * V)])
    }

    /// Gradients under every mask against central finite differences of the loss (fp32 forward, so a loose tolerance
    /// relative to the tensor's largest gradient), on the largest entries of every tensor.
    func testGradientsMatchFiniteDifferencesUnderEveryMask() throws {
        let cfg = BertConfig(vocabularySize: 30, hiddenSize: 16, layerCount: 2, headCount: 4, intermediateSize: 24, maxPositions: 16)
        let batch = [MaskedSequence(input: [2, 9, 4, 17, 22, 4, 3], labels: [-100, -100, 12, -100, -100, 8, -100]),
                     MaskedSequence(input: [2, 4, 28, 3], labels: [-100, 19, 28, -100])]
        for att in [BertAttention.bidirectional, .mixed(byLayer: false), .mixed(byLayer: true)] {
            let p = BertParameters(initializing: BertMLMArchitecture(config: cfg, initializerRange: 0.4), seed: 9)
            // LayerNorm and bias values away from 1 / 0.
            var s: UInt64 = 3
            for t in p.tensors where t.shape.count == 1 {
                let v = p.values(t)
                for i in 0..<v.count {
                    s = s &* 6364136223846793005 &+ 1442695040888963407
                    v[i] += Float(Double(s >> 40) / Double(1 << 24) - 0.5) * 0.4
                }
            }
            let trainer = BertMLMTrainer(parameters: p, attention: att, pool: pool)
            try trainer.forwardBackward(batch)
            let g = trainer.gradients.clone()
            for t in p.tensors {
                let gv = g.values(t)
                let top = (0..<t.count).sorted { abs(gv[$0]) > abs(gv[$1]) }.prefix(2)
                let gmax = Double(abs(gv[top.first!]))
                if gmax < 1e-4 { continue }
                for i in top {
                    let v = p.values(t), old = v[i], h: Float = 1e-2
                    v[i] = old + h; let lp = try trainer.loss(batch).meanLoss
                    v[i] = old - h; let lm = try trainer.loss(batch).meanLoss
                    v[i] = old
                    let num = (lp - lm) / Double(2 * h)
                    XCTAssertLessThan(abs(num - Double(gv[i])), 0.01 * gmax + 2e-4, "\(att.name) \(t.name)[\(i)]: numeric \(num), analytic \(gv[i])")
                }
            }
        }
    }

    // MARK: Masking

    func testMaskingRatesSpecialTokensAndDeterminism() throws {
        let specials: Set<Int> = [0, 1, 2, 3, 4]
        let m = try MLMMasker(rate: 0.15, maskTokenID: 4, vocabularySize: 500, specialIDs: specials, seed: 42)
        var ids = [2]
        var rng = SequenceRNG(seed: 1)
        for _ in 0..<40_000 { ids.append(5 + Int(rng.next() % 495)) }
        for k in stride(from: 50, to: ids.count, by: 97) { ids[k] = [0, 1, 3][k % 3] }   // specials inside the text
        ids.append(3)
        let ex = MLMExample(ids: ids, index: 7)
        let out = m.mask(ex, step: 3)
        var selected = 0, masked = 0, random = 0, kept = 0, maskable = 0
        for i in ids.indices {
            if specials.contains(ids[i]) {
                XCTAssertEqual(out.labels[i], -100, "special token at \(i) selected")
                XCTAssertEqual(out.input[i], ids[i], "special token at \(i) changed")
                continue
            }
            maskable += 1
            if out.labels[i] == -100 { XCTAssertEqual(out.input[i], ids[i]); continue }
            XCTAssertEqual(out.labels[i], ids[i])
            selected += 1
            if out.input[i] == 4 { masked += 1 } else if out.input[i] == ids[i] { kept += 1 } else {
                random += 1
                XCTAssertFalse(specials.contains(out.input[i]), "random replacement \(out.input[i]) is special")
            }
        }
        let rate = Double(selected) / Double(maskable)
        print("masking: selected \(rate), of them [MASK] \(Double(masked) / Double(selected)), random \(Double(random) / Double(selected)), kept \(Double(kept) / Double(selected))")
        XCTAssertEqual(rate, 0.15, accuracy: 0.006)
        XCTAssertEqual(Double(masked) / Double(selected), 0.8, accuracy: 0.02)
        XCTAssertEqual(Double(random) / Double(selected), 0.1, accuracy: 0.015)
        XCTAssertEqual(Double(kept) / Double(selected), 0.1, accuracy: 0.015)
        // Deterministic in (seed, step, index); different otherwise.
        XCTAssertEqual(m.mask(ex, step: 3), out)
        XCTAssertNotEqual(m.mask(ex, step: 4), out)
        XCTAssertNotEqual(m.mask(MLMExample(ids: ids, index: 8), step: 3), out)
        var other = m; other.seed = 43
        XCTAssertNotEqual(other.mask(ex, step: 3), out)
        // A short sequence always gets a scored token; pre-masked examples keep their labels.
        let short = MLMExample(ids: [2, 17, 3], index: 0)
        for step in 0..<50 { XCTAssertEqual(m.mask(short, step: step).labels[1], 17) }
        let given = MLMExample(ids: [2, 4, 3], labels: [-100, 9, -100], index: 0)
        XCTAssertEqual(m.mask(given, step: 0), MaskedSequence(input: [2, 4, 3], labels: [-100, 9, -100]))
    }

    func testTokenizerSpecialTokensAreNeverMasked() throws {
        let tok = try WordPieceTokenizer(path: Self.modelDir + "/tokenizer.json")
        let m = try MLMMasker(tokenizer: tok, vocabularySize: 119, rate: 1, seed: 0)
        XCTAssertEqual(m.maskTokenID, tok.maskTokenID)
        let ids = tok.encode("the cat sat on the mat [SEP] [PAD] and the dog ran")
        XCTAssertEqual(ids.first, tok.clsTokenID)
        let out = m.mask(MLMExample(ids: ids, index: 0), step: 0)
        for (i, id) in ids.enumerated() {
            if tok.isSpecial(id) { XCTAssertEqual(out.labels[i], -100, "special \(tok.tokenString(id) ?? "") masked") }
            else { XCTAssertEqual(out.labels[i], id, "rate 1 selects every other token") }
        }
    }

    // MARK: Training loop and checkpoints

    func writeData(_ dir: URL) throws -> String {
        let lines = ["the cat sat on the mat .", "a big dog ran to the red house", "the bird sang in the garden at night",
                     "{\"text\": \"old man walked on the long road\"}", "the river is cold and the sea is warm",
                     "a small fish swam under the ship", "the sun and the moon", "green field , old horse"]
        let path = dir.appendingPathComponent("data.jsonl").path
        let text = lines.map { $0.hasPrefix("{") ? $0 : "{\"text\": \"\($0)\"}" }.joined(separator: "\n") + "\n"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func makeLoop(_ p: BertParameters, data: MLMDataset, out: String, steps: Int, seed: UInt64,
                  saveEvery: Int? = nil) throws -> TrainingLoop<BertMLMTrainer> {
        let tok = try WordPieceTokenizer(path: Self.modelDir + "/tokenizer.json")
        let masker = try MLMMasker(tokenizer: tok, vocabularySize: p.config.vocabularySize, rate: 0.15, seed: seed)
        let trainer = BertMLMTrainer(parameters: p, attention: .bidirectional, masker: masker, pool: pool)
        let opts = TrainingOptions(steps: steps, batchTokens: 40, microBatch: 20, learningRate: 1e-2, warmupSteps: 1, seed: seed,
                                   saveEvery: saveEvery)
        let loop = TrainingLoop(trainer: trainer, trainable: p, examples: data.examples, options: opts, directory: out, pool: pool,
                                shuffled: { _, s, e in data.shuffled(seed: s, epoch: e) }, pack: MLMDataset.pack,
                                tokenCount: { $0.tokenCount })
        loop.evalExamples = data.examples
        loop.save = { opt, state in try BertMLMCheckpoint.save(p, optimizer: opt, state: state, to: out) }
        return loop
    }

    func testCheckpointReloadsAndResumeIsIdentical() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mlm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let tok = try WordPieceTokenizer(path: Self.modelDir + "/tokenizer.json")
        let masker = try MLMMasker(tokenizer: tok, vocabularySize: 119, seed: 0)
        let data = try MLMDataReader(tokenizer: tok, masker: masker, vocabularySize: 119, maxLength: 64).load(path: writeData(dir))
        XCTAssertEqual(data.examples.count, 8)

        // 4 steps straight.
        let straight = try BertParameters(directory: Self.modelDir)
        let a = try makeLoop(straight, data: data, out: dir.appendingPathComponent("a").path, steps: 4, seed: 3)
        try a.run()
        // The same run, checkpointed at step 2 (saveEvery 2); a fresh trainer resumes from that checkpoint.
        let bdir = dir.appendingPathComponent("b").path
        let firstHalf = try BertParameters(directory: Self.modelDir)
        let b = try makeLoop(firstHalf, data: data, out: dir.appendingPathComponent("b-run").path, steps: 4, seed: 3, saveEvery: 2)
        b.save = { opt, state in
            if state.step == 2 { try BertMLMCheckpoint.save(firstHalf, optimizer: opt, state: state, to: bdir) }
        }
        try b.run()
        XCTAssertEqual(firstHalf.maxAbsDifference(straight), 0, "the same run twice")
        let resumed = try BertParameters(directory: bdir)
        let c = try makeLoop(resumed, data: data, out: dir.appendingPathComponent("c").path, steps: 4, seed: 3)
        try c.resume { try BertMLMCheckpoint.loadState(directory: bdir, into: $0) }
        XCTAssertEqual(c.startStep, 2)
        try c.run()
        XCTAssertEqual(resumed.maxAbsDifference(straight), 0, "resumed run equals the uninterrupted one")

        // The checkpoint reloads: same parameters, same logits; config says BertForMaskedLM; training moved the loss.
        let outA = dir.appendingPathComponent("a").path
        let reloaded = try BertParameters(directory: outA)
        XCTAssertFalse(reloaded.headInitialized)
        XCTAssertEqual(reloaded.maxAbsDifference(straight), 0)
        let cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: outA + "/config.json"))) as? [String: Any])
        XCTAssertEqual(cfg["architectures"] as? [String], ["BertForMaskedLM"])
        let st = try SafetensorsFile(path: outA + "/model.safetensors")
        XCTAssertNil(st.tensorsByName["cls.predictions.decoder.weight"], "the tied decoder is left out, as transformers saves it")
        let metrics = try String(contentsOfFile: outA + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(metrics.filter { $0.contains("\"loss\"") }.count, 4)
        XCTAssertEqual(metrics.filter { $0.contains("eval_loss") }.count, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: outA + "/loss.svg"))
        let batch = try fixtureBatch()
        XCTAssertEqual(try BertMLMTrainer(parameters: reloaded, pool: pool).logits(batch),
                       try BertMLMTrainer(parameters: straight, pool: pool).logits(batch))
        let before = try BertMLMTrainer(parameters: BertParameters(directory: Self.modelDir), pool: pool).loss(batch).meanLoss
        let after = try BertMLMTrainer(parameters: reloaded, pool: pool).loss(batch).meanLoss
        XCTAssertNotEqual(before, after)
    }

    func testGradientAccumulationEqualsOneBatch() throws {
        let batch = try fixtureBatch()
        let one = BertMLMTrainer(parameters: try BertParameters(directory: Self.modelDir), pool: pool)
        try one.forwardBackward(batch)
        let acc = BertMLMTrainer(parameters: try BertParameters(directory: Self.modelDir), pool: pool)
        let examples = batch.enumerated().map { MLMExample(ids: $1.input, labels: $1.labels, index: $0) }
        let l = try acc.accumulate([[examples[0]], [examples[1], examples[2]]])
        XCTAssertEqual(l.scoredTokens, batch.reduce(0) { $0 + $1.scoredCount })
        XCTAssertLessThan(Double(acc.gradients.maxAbsDifference(one.gradients)), 1e-6)
    }

    /// Evaluation masks do not depend on the run's seed: two trainers with maskers of seeds 1 and 2 score unmasked
    /// examples on seed 0's step -1 masks (what `causal eval` uses), while their training masks differ.
    func testEvaluationMasksAreSeedZerosWhateverTheRunsSeed() throws {
        let batch = try fixtureBatch()
        // The fixture's sequences with their original tokens restored (labels where scored), unmasked.
        let examples = batch.enumerated().map { (n: Int, m: MaskedSequence) -> MLMExample in
            let ids = m.input.indices.map { i in m.labels[i] == -100 ? m.input[i] : m.labels[i] }
            return MLMExample(ids: ids, index: n)
        }
        func masker(_ seed: UInt64) throws -> MLMMasker {
            try MLMMasker(rate: 0.3, maskTokenID: 4, vocabularySize: 119, specialIDs: [0, 1, 2, 3], seed: seed)
        }
        let a = BertMLMTrainer(parameters: try BertParameters(directory: Self.modelDir), masker: try masker(1), pool: pool)
        let b = BertMLMTrainer(parameters: try BertParameters(directory: Self.modelDir), masker: try masker(2), pool: pool)
        XCTAssertEqual(try a.masked(examples, step: -1), try b.masked(examples, step: -1))
        XCTAssertEqual(try a.masked(examples, step: -1), examples.map { try! masker(0).mask($0, step: -1) })
        XCTAssertNotEqual(try a.masked(examples, step: 0), try b.masked(examples, step: 0))
        let la = try a.evaluate(examples, maxBatchTokens: 4096), lb = try b.evaluate(examples, maxBatchTokens: 4096)
        XCTAssertGreaterThan(la.scoredTokens, 0)
        XCTAssertEqual(la.sumLoss, lb.sumLoss)
    }

    /// An encoder-only directory (BertModel names, no MLM head) loads with a seeded head, as transformers would
    /// initialise the missing cls.predictions.* tensors.
    func testEncoderOnlyDirectoryGetsAnInitialisedHead() throws {
        let p = try BertParameters(directory: Fixtures.url("tiny/bert").path, headSeed: 1)
        XCTAssertTrue(p.headInitialized)
        let norm = try XCTUnwrap(p.tensor("cls.predictions.transform.LayerNorm.weight"))
        XCTAssertEqual(Set(p.values(norm)), [1])
        let bias = try XCTUnwrap(p.tensor("cls.predictions.bias"))
        XCTAssertEqual(Set(p.values(bias)), [0])
        let dense = try XCTUnwrap(p.tensor("cls.predictions.transform.dense.weight"))
        let v = p.values(dense)
        let std = (v.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(v.count)).squareRoot()
        XCTAssertEqual(std, 0.2, accuracy: 0.02, "normal(0, initializer_range 0.2)")
        // The encoder itself is the file's: the trainer's hidden states equal BertModel's.
        let model = try BertModel(directory: Fixtures.url("tiny/bert").path, pool: pool)
        let ids = [[101, 7, 300, 22, 102]]
        let ours = try BertMLMTrainer(parameters: p, pool: pool).hiddenStates([MaskedSequence(input: ids[0], labels: [-100, -100, -100, -100, -100])])
        XCTAssertLessThan(zip(ours[0], try model.lastHidden(ids)[0]).map { abs($0 - $1) }.max()!, 1e-5)
    }

    // MARK: Bad input

    func testBadInputIsNamed() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mlm-bad-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let tok = try WordPieceTokenizer(path: Self.modelDir + "/tokenizer.json")
        let masker = try MLMMasker(tokenizer: tok, vocabularySize: 119, seed: 0)
        let reader = MLMDataReader(tokenizer: tok, masker: masker, vocabularySize: 119, maxLength: 64)
        func message(_ content: String, name: String = "d.jsonl", _ r: MLMDataReader? = nil) -> String {
            let path = dir.appendingPathComponent(name).path
            try? content.write(toFile: path, atomically: true, encoding: .utf8)
            do { _ = try (r ?? reader).load(path: path); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(message("{\"text\": \"the cat\"}\nnot json\n").contains("line 2"))
        XCTAssertTrue(message("{\"txt\": \"the cat\"}\n").contains("line 1: text"))
        XCTAssertTrue(message("{\"text\": 5}\n").contains("line 1: text"))
        let oor = message("{\"input_ids\": [2, 500, 3]}\n")
        XCTAssertTrue(oor.contains("input_ids") && oor.contains("500"), oor)
        XCTAssertTrue(message("{\"input_ids\": [2, 5, 3], \"labels\": [-100, 5]}\n").contains("line 1: labels"))
        XCTAssertTrue(message("{\"input_ids\": [2, 5, 3], \"labels\": [-100, 7000, -100]}\n").contains("7000"))
        XCTAssertTrue(message("{\"input_ids\": [2, true, 3]}\n").contains("input_ids"))
        XCTAssertTrue(message("{\"input_ids\": [2, 3]}\n").contains("no documents"))
        let noTok = MLMDataReader(tokenizer: nil, masker: masker, vocabularySize: 119, maxLength: 64)
        XCTAssertTrue(message("the cat sat\n", name: "d.txt", noTok).contains("tokenizer.json"))
        XCTAssertEqual(message("the cat sat\n\nthe dog ran\n", name: "ok.txt"), "no error")
        XCTAssertThrowsError(try MLMMasker(rate: 0, maskTokenID: 4, vocabularySize: 10, specialIDs: [], seed: 0))
        XCTAssertThrowsError(try MLMMasker(rate: 0.15, maskTokenID: 40, vocabularySize: 10, specialIDs: [], seed: 0))
        // Config fields.
        let cfgPath = dir.appendingPathComponent("config.json").path
        try #"{"hidden_size": 30, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 8}"#
            .write(toFile: cfgPath, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try BertMLMArchitecture(path: cfgPath, vocabularySize: 119)) { XCTAssertTrue("\($0)".contains("num_attention_heads"), "\($0)") }
        try #"{"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 8}"#
            .write(toFile: cfgPath, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try BertMLMArchitecture(path: cfgPath, vocabularySize: 119)) { XCTAssertTrue("\($0)".contains("vocab_size"), "\($0)") }
        // Batches.
        let trainer = BertMLMTrainer(parameters: try BertParameters(directory: Self.modelDir), pool: pool)
        XCTAssertThrowsError(try trainer.forwardBackward([MaskedSequence(input: [2, 5, 3], labels: [-100, -100, -100])])) {
            XCTAssertTrue("\($0)".contains("scored"), "\($0)")
        }
        XCTAssertThrowsError(try trainer.forwardBackward([MaskedSequence(input: Array(repeating: 5, count: 65), labels: [5] + Array(repeating: -100, count: 64))])) {
            XCTAssertTrue("\($0)".contains("max_position_embeddings"), "\($0)")
        }
        XCTAssertThrowsError(try trainer.forwardBackward([MaskedSequence(input: [2, 5000, 3], labels: [-100, 5, -100])]))
    }
}
