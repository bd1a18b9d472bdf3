import Foundation
import XCTest
import CausalLM
import CausalKernels

/// LoRA training against PyTorch + peft (Tests/Fixtures/lora, made by Tests/Fixtures/gen/make_lora_refs.py): the
/// gradient of every factor at a seeded non-zero adapter, and the adapter after 3 AdamW steps, per tensor within
/// 1e-4 relative (‖ours − ref‖ / ‖ref‖). The tiny Qwen2 (q/k/v biases, rotate-half RoPE, fp32) and SmolLM2-135M from
/// its Q4_1 GGUF (LLaMA's permuted q/k rows; the base stays quantized: QLoRA), three layers adapted.
final class LoRATrainingTests: XCTestCase {
    func rel(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(abs(b), 1e-30) }

    /// ‖a − b‖ / ‖b‖ of every tensor of `ref` against the same-named tensor of `ours` (both safetensors files).
    /// With `undetermined` (a gradients file and a bound), elements whose reference gradient at the first step is
    /// below 1e-5 of its tensor's largest are left out of the relative error and only bounded (see the AdamW note
    /// in docs/training.md): fp32 cannot say which way they point, and Adam's first step moves every element by
    /// about ±lr whatever its size.
    func compareTensors(_ ours: String, _ ref: String, tolerance: Double, what: String,
                        undetermined: (gradients: String, bound: Float)? = nil,
                        file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try SafetensorsFile(path: ours), b = try SafetensorsFile(path: ref)
        let g = try undetermined.map { try SafetensorsFile(path: $0.gradients) }
        var leftOut = 0
        XCTAssertEqual(Set(a.tensors.map(\.name)), Set(b.tensors.map(\.name)), "\(what): tensor names", file: file, line: line)
        var worst = (0.0, "")
        for t in b.tensors {
            guard let u = a.tensorsByName[t.name] else { continue }
            XCTAssertEqual(u.shape, t.shape, "\(what): \(t.name) shape", file: file, line: line)
            func floats(_ f: SafetensorsFile, _ x: SafetensorsTensor) -> [Float] {
                var out = [Float](repeating: 0, count: x.elementCount)
                out.withUnsafeMutableBufferPointer {
                    dequantizeAll(WeightMatrix(dtype: x.dtype.weightType!, data: f.data(x), rows: x.shape[0], cols: x.elementCount / x.shape[0]), into: $0.baseAddress!)
                }
                return out
            }
            let x = floats(a, u), y = floats(b, t)
            var skip = [Bool](repeating: false, count: y.count)
            if let g, let bound = undetermined?.bound, let gt = g.tensorsByName[t.name] {
                let gr = floats(g, gt), top = gr.map(abs).max() ?? 0
                for i in 0..<y.count where abs(gr[i]) < 1e-5 * top {
                    skip[i] = true
                    leftOut += 1
                    XCTAssertLessThan(abs(x[i] - y[i]), bound, "\(what): \(t.name)[\(i)] (gradient \(gr[i]) of undetermined sign)", file: file, line: line)
                }
                XCTAssertLessThanOrEqual(skip.filter { $0 }.count, max(1, y.count / 100), "\(what): \(t.name): too many undetermined elements", file: file, line: line)
            }
            var d = 0.0, n = 0.0
            for i in 0..<y.count where !skip[i] { d += Double(x[i] - y[i]) * Double(x[i] - y[i]); n += Double(y[i]) * Double(y[i]) }
            let r = (d / max(n, 1e-60)).squareRoot()
            if r > worst.0 { worst = (r, t.name) }
            if ProcessInfo.processInfo.environment["LORA_VERBOSE"] != nil { print(String(format: "  %.2e  %@", r, t.name)) }
            XCTAssertLessThan(r, tolerance, "\(what): \(t.name)", file: file, line: line)
        }
        print(String(format: "%@: %d tensors, worst relative difference %.2e (%@)%@", what, b.tensors.count, worst.0, worst.1,
                     g == nil ? "" : ", \(leftOut) elements of undetermined gradient sign left out"))
    }

    func runCase(_ name: String, base: DecoderModel) throws {
        let dir = Fixtures.url("lora/\(name)").path
        let ref = try XCTUnwrap(Fixtures.json("lora/\(name)/refs.json") as? [String: Any])
        let batchRef = try XCTUnwrap(ref["batch"] as? [String: Any])
        let tokens = try XCTUnwrap(batchRef["tokens"] as? [[Int]]), labels = try XCTUnwrap(batchRef["labels"] as? [[Int]])
        let batch = zip(tokens, labels).map { t, l in
            SFTExample(tokens: t, labels: l, promptLength: l.firstIndex { $0 != ignoredLabel } ?? t.count)
        }
        let adapter = try LoRAAdapter.load(directory: dir + "/adapter_init", model: base)
        let trainer = try DecoderTrainer(base: base, adapter: adapter)
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-\(name)-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: tmp) }

        // Gradients at the initial adapter.
        let loss = try trainer.forwardBackward(batch)
        let refLoss = try XCTUnwrap(ref["loss"] as? Double)
        print(String(format: "lora %@: loss %.7f (ref %.7f, rel %.2e), %d scored", name, loss.meanLoss, refLoss, rel(loss.meanLoss, refLoss), loss.scoredTokens))
        XCTAssertEqual(loss.scoredTokens, ref["scored_tokens"] as? Int)
        XCTAssertLessThan(rel(loss.meanLoss, refLoss), 1e-5)
        let grads = try XCTUnwrap(trainer.adapterGradients)
        try grads.write(to: tmp + "/grads")
        if let keep = ProcessInfo.processInfo.environment["LORA_KEEP"] { try? grads.write(to: keep + "/\(name)-grads") }
        try compareTensors(tmp + "/grads/adapter_model.safetensors", dir + "/grads.safetensors", tolerance: 1e-4, what: "\(name) gradients")

        // Three AdamW steps on the same batch (lr 1e-3, weight decay 0.01 on A and B), as the reference.
        let adam = try XCTUnwrap(ref["adamw"] as? [String: Any])
        let opt = AdamW(parameters: adapter, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: try XCTUnwrap(adam["weight_decay"] as? Double))
        let lr = try XCTUnwrap(adam["lr"] as? Double)
        let stepLosses = try XCTUnwrap(ref["step_losses"] as? [Double])
        var losses = [loss.meanLoss]
        opt.update(adapter, gradients: trainer.gradients, lr: lr)
        for _ in 1..<3 {
            trainer.zeroGradients()
            losses.append(try trainer.forwardBackward(batch).meanLoss)
            opt.update(adapter, gradients: trainer.gradients, lr: lr)
        }
        for (i, l) in losses.enumerated() {
            print(String(format: "lora %@: step %d loss %.7f (ref %.7f, rel %.2e)", name, i + 1, l, stepLosses[i], rel(l, stepLosses[i])))
            XCTAssertLessThan(rel(l, stepLosses[i]), 1e-4, "loss before step \(i + 1)")
        }
        let after = try trainer.loss(batch).meanLoss, refAfter = try XCTUnwrap(ref["loss_after_step3"] as? Double)
        print(String(format: "lora %@: loss after 3 steps %.7f (ref %.7f, rel %.2e)", name, after, refAfter, rel(after, refAfter)))
        XCTAssertLessThan(rel(after, refAfter), 1e-4)
        try adapter.write(to: tmp + "/step3")
        try compareTensors(tmp + "/step3/adapter_model.safetensors", dir + "/adapter_step3/adapter_model.safetensors",
                           tolerance: 1e-4, what: "\(name) adapter after 3 AdamW steps",
                           undetermined: (dir + "/grads.safetensors", Float(3 * 2 * lr)))
    }

    func testTinyQwen2MatchesPEFT() throws {
        let bundle = try ModelBundle(path: Fixtures.url("tiny/qwen2").path)
        try runCase("qwen2", base: try bundle.decoder)
    }

    func testSmolLM2QLoRAMatchesPEFT() throws {
        let bundle = try ModelBundle(path: TestModel.path)   // Q4_1, left quantized
        try runCase("smollm2", base: try bundle.decoder)
    }
}
