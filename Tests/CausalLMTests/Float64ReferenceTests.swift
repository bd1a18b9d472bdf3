import Foundation
import XCTest
import CausalLM
import CausalKernels

/// SmolLM2-135M-Instruct against a forward and backward computed entirely in float64 on the same dequantized weights
/// (Tests/Fixtures/float64/smollm2, made by Tests/Fixtures/gen/make_float64_refs.py; transformers' own loss is not a
/// float64 oracle: it casts the logits to float32 before a cross entropy that is off by ~9e-6 per token over this
/// vocabulary, see the script). The batch is the 3 SFT examples of Tests/Fixtures/lora/smollm2 (26 scored tokens).
///
/// Measured (AVX-512, 2026-12-07): inference logits (precision .reference) per-position log-sum-exp within 2.3e-5
/// (of values near 30), top-20 logits within 4.4e-5 (PyTorch fp32: 3.8e-5 and 5.1e-5), base loss 1.8e-7 relative;
/// the training forward over the frozen Q4_1 base 2.8e-7; QLoRA loss 2.4e-7 relative (per sequence 1.0e-6) and the
/// gradient of every LoRA factor within 5.4e-6 relative (PyTorch fp32 with transformers' loss: 5.6e-6 and 9.6e-5).
/// The bounds below leave about 3x room.
final class Float64ReferenceTests: XCTestCase {
    static let refs: [String: Any] = { try! Fixtures.json("float64/smollm2/refs.json") as! [String: Any] }()

    static func batch() throws -> [SFTExample] {
        let r = try XCTUnwrap(Fixtures.json("lora/smollm2/refs.json") as? [String: Any])
        let b = try XCTUnwrap(r["batch"] as? [String: Any])
        let tokens = try XCTUnwrap(b["tokens"] as? [[Int]]), labels = try XCTUnwrap(b["labels"] as? [[Int]])
        return zip(tokens, labels).map { t, l in
            SFTExample(tokens: t, labels: l, promptLength: l.firstIndex { $0 != ignoredLabel } ?? t.count)
        }
    }

    func rel(_ a: Double, _ b: Double) -> Double { abs(a - b) / abs(b) }

    /// The inference path (DecoderModel.forward, every position's logits, precision .reference): each row's
    /// log-sum-exp and top-20 logits, and the loss of the batch from those logits.
    func testReferenceLogitsAgainstFloat64() throws {
        let bundle = try ModelBundle(path: TestModel.path, precision: .reference)
        let base = try XCTUnwrap(Self.refs["base"] as? [String: Any])
        let rows = try XCTUnwrap(base["sequences"] as? [[String: Any]])
        let V = bundle.model.vocabularySize
        var worstLSE = 0.0, worstTop = 0.0, sum = 0.0, scored = 0
        for (s, ex) in try Self.batch().enumerated() {
            let cache = bundle.model.makeCache(capacity: 256)
            let all = try bundle.model.forward([SequenceChunk(cache: cache, tokens: ex.tokens, logits: .all)])[0]
            XCTAssertEqual(all.count, ex.tokens.count * V)
            let lse64 = try XCTUnwrap(rows[s]["lse"] as? [Double]), top64 = try XCTUnwrap(rows[s]["top20"] as? [[[Double]]])
            XCTAssertEqual(lse64.count, ex.tokens.count)
            for t in 0..<ex.tokens.count {
                let row = all[(t * V)..<((t + 1) * V)]
                let mx = Double(row.max()!)
                let lse = mx + log(row.reduce(0.0) { $0 + exp(Double($1) - mx) })
                worstLSE = max(worstLSE, abs(lse - lse64[t]))
                XCTAssertEqual(lse, lse64[t], accuracy: 7e-5, "sequence \(s) position \(t): log-sum-exp")
                for pair in top64[t] {
                    let id = Int(pair[0])
                    worstTop = max(worstTop, abs(Double(row[row.startIndex + id]) - pair[1]))
                    XCTAssertEqual(Double(row[row.startIndex + id]), pair[1], accuracy: 1.5e-4, "sequence \(s) position \(t) id \(id)")
                }
                if t + 1 < ex.labels.count, ex.labels[t + 1] != ignoredLabel {
                    sum += lse - Double(row[row.startIndex + ex.labels[t + 1]])
                    scored += 1
                }
            }
        }
        let loss64 = try XCTUnwrap(base["loss"] as? Double)
        XCTAssertEqual(scored, Self.refs["scored_tokens"] as? Int)
        let loss = sum / Double(scored)
        print(String(format: "[float64] inference: max |Δ log-sum-exp| %.2e, max |Δ top-20 logit| %.2e, loss %.10f vs %.10f (rel %.2e)",
                     worstLSE, worstTop, loss, loss64, rel(loss, loss64)))
        XCTAssertLessThan(rel(loss, loss64), 1e-6)
    }

    /// The training path over the frozen Q4_1 base (QLoRA, as LoRATrainingTests runs it): the loss without an
    /// adapter, then with lora/smollm2/adapter_init the loss and every factor's gradient (‖ours − f64‖ / ‖f64‖).
    func testQLoRALossAndGradientsAgainstFloat64() throws {
        let base = try ModelBundle(path: TestModel.path).decoder   // Q4_1, left quantized
        let batch = try Self.batch()
        let baseRef = try XCTUnwrap(Self.refs["base"] as? [String: Any]), loraRef = try XCTUnwrap(Self.refs["lora"] as? [String: Any])

        let frozen = try DecoderTrainer(base: base, adapter: nil).loss(batch)
        let baseLoss64 = try XCTUnwrap(baseRef["loss"] as? Double)
        print(String(format: "[float64] training forward, no adapter: loss %.10f vs %.10f (rel %.2e)", frozen.meanLoss, baseLoss64, rel(frozen.meanLoss, baseLoss64)))
        XCTAssertLessThan(rel(frozen.meanLoss, baseLoss64), 1e-6)

        let adapter = try LoRAAdapter.load(directory: Fixtures.url("lora/smollm2/adapter_init").path, model: base)
        let trainer = try DecoderTrainer(base: base, adapter: adapter)
        let loss = try trainer.forwardBackward(batch)
        let loss64 = try XCTUnwrap(loraRef["loss"] as? Double), sums64 = try XCTUnwrap(loraRef["sequence_sums"] as? [Double])
        XCTAssertEqual(loss.scoredTokens, Self.refs["scored_tokens"] as? Int)
        print(String(format: "[float64] QLoRA: loss %.10f vs %.10f (rel %.2e)", loss.meanLoss, loss64, rel(loss.meanLoss, loss64)))
        XCTAssertLessThan(rel(loss.meanLoss, loss64), 1e-6)
        for (s, seq) in loss.sequences.enumerated() {
            print(String(format: "[float64] QLoRA: sequence %d loss sum %.10f vs %.10f (rel %.2e)", s, seq.sumLoss, sums64[s], rel(seq.sumLoss, sums64[s])))
            XCTAssertLessThan(rel(seq.sumLoss, sums64[s]), 3e-6, "sequence \(s): loss sum \(seq.sumLoss) vs \(sums64[s])")
        }

        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("f64-grads-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try XCTUnwrap(trainer.adapterGradients).write(to: tmp)
        let ours = try SafetensorsFile(path: tmp + "/adapter_model.safetensors")
        let ref = try SafetensorsFile(path: Fixtures.url("float64/smollm2/grads.safetensors").path)
        XCTAssertEqual(Set(ours.tensors.map(\.name)), Set(ref.tensors.map(\.name)))
        func floats(_ f: SafetensorsFile, _ t: SafetensorsTensor) -> [Float] {
            var out = [Float](repeating: 0, count: t.elementCount)
            out.withUnsafeMutableBufferPointer {
                dequantizeAll(WeightMatrix(dtype: t.dtype.weightType!, data: f.data(t), rows: t.shape[0], cols: t.elementCount / t.shape[0]), into: $0.baseAddress!)
            }
            return out
        }
        var worst = (0.0, "")
        for t in ref.tensors {
            let u = try XCTUnwrap(ours.tensorsByName[t.name], t.name)
            XCTAssertEqual(u.shape, t.shape, t.name)
            let x = floats(ours, u), y = floats(ref, t)
            var d = 0.0, n = 0.0
            for i in 0..<y.count { d += Double(x[i] - y[i]) * Double(x[i] - y[i]); n += Double(y[i]) * Double(y[i]) }
            let r = (d / n).squareRoot()
            if r > worst.0 { worst = (r, t.name) }
            XCTAssertLessThan(r, 1.5e-5, "gradient of \(t.name)")
        }
        print(String(format: "[float64] QLoRA gradients: %d tensors, worst relative difference %.2e (%@)", ref.tensors.count, worst.0, worst.1))
    }
}
