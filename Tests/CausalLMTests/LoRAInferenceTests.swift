import Foundation
import XCTest
import CausalLM
import CausalKernels

/// LoRA adapters at inference: PEFT files read and written (q/k rows permuted for LLaMA's adjacent-pair RoPE), the
/// decoder forward with per-chunk adapters against PyTorch + peft (Tests/Fixtures/lora, make_lora_refs.py) and against
/// the merged weights W + s·B·A, batch invariance with sequences of different adapters and none in one step, the
/// Generator and Scheduler carrying each sequence's adapter (prefix cache per adapter), and clear errors.
final class LoRAInferenceTests: XCTestCase {
    static func tiny(_ family: String) -> String { Fixtures.url("tiny/\(family)").path }

    func decoder(_ path: String, _ precision: Precision = .reference) throws -> (ModelBundle, DecoderModel) {
        let b = try ModelBundle(path: path, precision: precision)
        return (b, try XCTUnwrap(b.model as? DecoderModel))
    }

    func tempDir(_ name: String) throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("lora-\(name)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// A seeded adapter with every factor random (B too, so it changes the model), values in ±`range`.
    static func randomAdapter(_ model: DecoderConfig, rank: Int = 4, alpha: Double = 8, targets: [LoRATarget] = LoRATarget.allCases,
                              layers: [Int]? = nil, seed: UInt64, range: Float = 0.1, rslora: Bool = false) throws -> LoRAAdapter {
        let a = try LoRAAdapter(config: LoRAConfig(rank: rank, alpha: alpha, targets: targets, layers: layers, useRSLoRA: rslora), model: model)
        var state = seed
        for i in 0..<a.count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            a.data[i] = (Float(state >> 40) / Float(1 << 24) * 2 - 1) * range
        }
        return a
    }

    /// max |a - b| / max(1, max |b|).
    static func relative(_ a: [Float], _ b: ArraySlice<Float>) -> Double {
        precondition(a.count == b.count)
        var worst = 0.0, scale = 1.0
        for (x, y) in zip(a, b) { worst = max(worst, Double(abs(x - y))); scale = max(scale, Double(abs(y))) }
        return worst / scale
    }

    func forwardAll(_ m: DecoderModel, _ tokens: [Int], _ adapter: LoRAAdapter?) throws -> [Float] {
        try m.forward([SequenceChunk(cache: m.makeCache(capacity: nil), tokens: tokens, logits: .all, adapter: adapter)])[0]
    }

    // MARK: PEFT files

    /// Write then read: the same factors bit for bit; in the file B's q/k rows are in HF's order for the adjacent-RoPE
    /// LLaMA (engine row r at HF row hfRowOrder(r)) and unpermuted for Qwen2 (rotate-half); everything else as is.
    func testPEFTRoundTripLlamaAndQwen2() throws {
        for (family, permuted) in [("llama", true), ("qwen2", false)] {
            let (_, m) = try decoder(Self.tiny(family))
            XCTAssertEqual(m.config.ropeStyle == .adjacent, permuted)
            let a = try Self.randomAdapter(m.config, rank: 3, alpha: 5.5, layers: [1], seed: 7, rslora: family == "qwen2")
            let dir = try tempDir(family)
            try a.write(to: dir, baseModel: "tiny/\(family)")
            let back = try LoRAAdapter.load(directory: dir, model: m.config)
            XCTAssertEqual(back.config, a.config, family)
            XCTAssertEqual(back.slots.map(\.layer), Array(repeating: 1, count: 7))
            XCTAssertEqual(Array(UnsafeBufferPointer(start: back.data, count: back.count)).map(\.bitPattern),
                           Array(UnsafeBufferPointer(start: a.data, count: a.count)).map(\.bitPattern), family)

            let file = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
            XCTAssertEqual(file.tensors.count, 14)
            let D = m.config.headDim
            for t in [LoRATarget.q, .k, .v, .down] {
                let s = try XCTUnwrap(a.slot(layer: 1, target: t))
                let st = try file.tensor("base_model.model.model.layers.1.\(t.modulePath).lora_B.weight")
                XCTAssertEqual(st.shape, [s.outDim, s.rank])
                let stored = file.data(st).assumingMemoryBound(to: Float.self)
                for r in 0..<s.outDim {
                    let fileRow = permuted && (t == .q || t == .k) ? LlamaCheckpoint.hfRowOrder(ofGGUFRow: r, headDim: D) : r
                    for k in 0..<s.rank { XCTAssertEqual(stored[fileRow * s.rank + k], a.b(s)[r * s.rank + k], "\(family) \(t) row \(r)") }
                }
                let sa = try file.tensor("base_model.model.model.layers.1.\(t.modulePath).lora_A.weight")
                XCTAssertEqual(sa.shape, [s.rank, s.inDim])
            }
            let cfg = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_config.json"))) as? [String: Any])
            XCTAssertEqual(cfg["peft_type"] as? String, "LORA")
            XCTAssertEqual(cfg["r"] as? Int, 3)
            XCTAssertEqual(cfg["layers_to_transform"] as? [Int], [1])
            XCTAssertEqual(cfg["base_model_name_or_path"] as? String, "tiny/\(family)")
            XCTAssertEqual((cfg["target_modules"] as? [String])?.count, 7)
            // No temporary files left behind.
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["adapter_config.json", "adapter_model.safetensors"])
        }
    }

    /// Every unsupported or inconsistent adapter is an error naming the file and the field or tensor.
    func testLoadErrorsNameTheFieldOrTensor() throws {
        let (_, m) = try decoder(Self.tiny("llama"))
        let good = try tempDir("good")
        try Self.randomAdapter(m.config, rank: 2, targets: [.q, .v], seed: 3).write(to: good)
        let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: good + "/adapter_config.json"))) as? [String: Any])

        func expect(_ label: String, _ dir: String, _ contains: [String], file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try LoRAAdapter.load(directory: dir, model: m.config), label, file: file, line: line) { e in
                for c in contains { XCTAssertTrue("\(e)".contains(c), "\(label): '\(e)' should mention '\(c)'", file: file, line: line) }
            }
        }
        /// A copy of the good adapter with its config changed.
        func variant(_ name: String, _ change: (inout [String: Any]) -> Void) throws -> String {
            let d = try tempDir(name)
            try FileManager.default.copyItem(atPath: good + "/adapter_model.safetensors", toPath: d + "/adapter_model.safetensors")
            var c = config
            change(&c)
            try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: d + "/adapter_config.json"))
            return d
        }

        expect("missing directory", good + "/nope", ["no such directory"])
        let empty = try tempDir("empty")
        expect("no config", empty, ["adapter_config.json", "no such file"])
        try FileManager.default.copyItem(atPath: good + "/adapter_config.json", toPath: empty + "/adapter_config.json")
        expect("no weights", empty, ["adapter_model.safetensors", "no such file"])
        expect("peft_type", try variant("type") { $0["peft_type"] = "IA3" }, ["peft_type", "IA3"])
        expect("fan_in_fan_out", try variant("fifo") { $0["fan_in_fan_out"] = true }, ["fan_in_fan_out"])
        expect("bias", try variant("bias") { $0["bias"] = "all" }, ["bias", "all"])
        expect("modules_to_save", try variant("mts") { $0["modules_to_save"] = ["lm_head"] }, ["modules_to_save"])
        expect("use_dora", try variant("dora") { $0["use_dora"] = true }, ["use_dora"])
        expect("rank_pattern", try variant("rp") { $0["rank_pattern"] = ["q_proj": 8] }, ["rank_pattern"])
        expect("unknown target", try variant("tm") { $0["target_modules"] = ["q_proj", "query_key_value"] }, ["target_modules", "query_key_value"])
        expect("regex target", try variant("re") { $0["target_modules"] = ".*proj" }, ["target_modules"])
        expect("layer outside", try variant("layer") { $0["layers_to_transform"] = [0, 5] }, ["layers_to_transform", "layer 5", "2 layers"])
        expect("rank mismatch", try variant("rank") { $0["r"] = 4 }, ["lora_A.weight", "shape [2, 64]", "[4, 64]"])
        expect("target not in file", try variant("more") { $0["target_modules"] = ["q_proj", "v_proj", "k_proj"] },
               ["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", "missing"])
        expect("tensor not in config", try variant("less") { $0["target_modules"] = ["q_proj"] },
               ["v_proj.lora_A.weight", "target_modules does not list"])
        expect("layer not in config", try variant("fewer") { $0["layers_to_transform"] = [0] },
               ["layers.1.", "layers_to_transform does not list"])
        expect("negative alpha", try variant("alpha") { $0["lora_alpha"] = -1 }, ["lora_alpha"])
        expect("task", try variant("task") { $0["task_type"] = "SEQ_CLS" }, ["task_type", "SEQ_CLS"])
        expect("not JSON", try {
            let d = try variant("json") { _ in }
            try Data("{\"peft_type\": ".utf8).write(to: URL(fileURLWithPath: d + "/adapter_config.json"))
            return d
        }(), ["adapter_config.json", "invalid JSON"])

        // An adapter of another model: shapes do not match this one's.
        let (_, q) = try decoder(Self.tiny("qwen2"))
        if q.config.hiddenSize != m.config.hiddenSize || q.config.kvHeadCount != m.config.kvHeadCount || q.config.intermediateSize != m.config.intermediateSize {
            XCTAssertThrowsError(try LoRAAdapter.load(directory: good, model: q.config)) { XCTAssertTrue("\($0)".contains("shape"), "\($0)") }
        }
        // A model-shape mismatch at run time is an error too, not a crash.
        let wrong = try Self.randomAdapter(q.config, seed: 1)
        if !wrong.fits(m.config) {
            XCTAssertThrowsError(try forwardAll(m, [1, 2, 3], wrong)) { XCTAssertTrue("\($0)".contains("LoRA adapter"), "\($0)") }
            let sched = try Scheduler(generator: ModelBundle(path: Self.tiny("llama")).makeGenerator(), maxSequences: 1)
            defer { sched.beginShutdown(cancelInFlight: true) }
            XCTAssertThrowsError(try sched.submit(SequenceRequest(prompt: [1, 2], parameters: GenerateParameters(maxNewTokens: 2), adapter: wrong))) {
                XCTAssertTrue("\($0)".contains("LoRA adapter"), "\($0)")
            }
            XCTAssertThrowsError(try ModelBundle(path: Self.tiny("llama")).makeGenerator().generate(
                [SequenceRequest(prompt: [1, 2], parameters: GenerateParameters(maxNewTokens: 2), adapter: wrong)])) {
                XCTAssertTrue("\($0)".contains("LoRA adapter"), "\($0)")
            }
        }
    }

    // MARK: Against PyTorch + peft

    /// adapter_step3 of Tests/Fixtures/lora/<case> (written by peft) loaded and run: the last-position logits of each
    /// prompt, alone, within 1e-4 of peft's (relative to the largest |logit|); the base model's within 1e-4 of
    /// transformers'; and the adapter moves the logits by far more than that tolerance.
    func checkPEFTLogits(_ caseName: String, model path: String) throws {
        let dir = Fixtures.url("lora/\(caseName)")
        guard FileManager.default.fileExists(atPath: dir.appendingPathComponent("adapter_step3").path) else {
            throw XCTSkip("Tests/Fixtures/lora/\(caseName) has not landed")
        }
        let refs = try XCTUnwrap(Fixtures.json("lora/\(caseName)/refs.json") as? [String: Any])
        let prompts = try XCTUnwrap(refs["prompts"] as? [[Int]])
        let (_, m) = try decoder(path)
        let V = m.vocabularySize
        let adapter = try LoRAAdapter.load(directory: dir.appendingPathComponent("adapter_step3").path, model: m.config)
        let withAdapter = try Fixtures.npyFloats("lora/\(caseName)/logits_step3.npy")
        let base = try Fixtures.npyFloats("lora/\(caseName)/logits_base.npy")
        XCTAssertEqual(withAdapter.count, prompts.count * V)
        var worst = 0.0, worstBase = 0.0, moved = 0.0
        for (i, p) in prompts.enumerated() {
            let ref = withAdapter[(i * V)..<((i + 1) * V)], refBase = base[(i * V)..<((i + 1) * V)]
            let ours = try m.forward([SequenceChunk(cache: m.makeCache(capacity: nil), tokens: p, adapter: adapter)])[0]
            let oursBase = try m.forward([SequenceChunk(cache: m.makeCache(capacity: nil), tokens: p)])[0]
            worst = max(worst, Self.relative(ours, ref))
            worstBase = max(worstBase, Self.relative(oursBase, refBase))
            moved = max(moved, Self.relative(Array(ref), refBase))
        }
        print("\(caseName): adapter logits vs peft max rel \(worst); base vs transformers \(worstBase); adapter moves logits by \(moved)")
        XCTAssertLessThanOrEqual(worst, 1e-4, "\(caseName): logits with the adapter vs peft")
        XCTAssertLessThanOrEqual(worstBase, 1e-4, "\(caseName): base logits vs transformers")
        XCTAssertGreaterThan(moved, 1e-2, "\(caseName): the adapter should change the logits well beyond the tolerance")
    }

    func testPEFTLogitsTinyQwen2() throws { try checkPEFTLogits("qwen2", model: Self.tiny("qwen2")) }

    /// SmolLM2 is a LLaMA (adjacent-pair RoPE in GGUF): this also checks the q/k row permutation of B against peft.
    func testPEFTLogitsSmolLM2() throws { try checkPEFTLogits("smollm2", model: TestModel.path) }

    // MARK: Merged weights

    /// Base + adapter equals the merged model W + s·B·A, exported as a Hugging Face directory and loaded back, within
    /// 1e-4 relative, on the tiny LLaMA (q/k rows permuted) and Qwen2 (biases: the update adds after the bias).
    func testMergedExportEqualsAdapterTiny() throws {
        for family in ["llama", "qwen2"] {
            let (bundle, m) = try decoder(Self.tiny(family))
            let a = try Self.randomAdapter(m.config, rank: 4, alpha: 8, seed: 11, range: 0.2)
            let out = try tempDir("merged-\(family)")
            try a.exportMerged(base: bundle, to: out)
            let merged = try XCTUnwrap(try ModelBundle(path: out, precision: .reference).model as? DecoderModel)
            let tokens = [5, 17, 99, 3, 250, 42, 8, 600]
            let ours = try forwardAll(m, tokens, a)
            let ref = try forwardAll(merged, tokens, nil)
            let base = try forwardAll(m, tokens, nil)
            let d = Self.relative(ours, ref[...]), moved = Self.relative(base, ref[...])
            print("\(family): adapter vs merged max rel \(d); adapter moves logits by \(moved)")
            XCTAssertLessThanOrEqual(d, 1e-4, family)
            XCTAssertGreaterThan(moved, 1e-2, family)
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/generation_config.json"), "other files copied")
        }
    }

    /// A GGUF base (SmolLM2, q/k rows permuted) merged into a GGUF file: the same logits as base + adapter within
    /// 1e-4 (reference precision), the metadata copied (the tokenizer loads), unadapted tensors keep their type.
    func testMergedGGUFEqualsAdapterSmolLM2() throws {
        let (bundle, m) = try decoder(TestModel.path)
        let a = try Self.randomAdapter(m.config, rank: 4, alpha: 8, layers: [0, 7, 29], seed: 13, range: 0.1)
        let out = try tempDir("merged-gguf") + "/merged.gguf"
        try a.exportMergedGGUF(base: bundle, to: out)
        let merged = try ModelBundle(path: out, precision: .reference)
        let mm = try XCTUnwrap(merged.model as? DecoderModel)
        let f = try GGUFFile(path: out), g = try GGUFFile(path: TestModel.path)
        XCTAssertEqual(f.metadataKeys, g.metadataKeys)
        XCTAssertEqual(f.tensors.map(\.name), g.tensors.map(\.name))
        XCTAssertEqual(try f.tensor("blk.7.attn_q.weight").type.name, "F32")
        XCTAssertEqual(try f.tensor("blk.6.attn_q.weight").type.name, try g.tensor("blk.6.attn_q.weight").type.name)
        let tokens = try bundle.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
        XCTAssertEqual(try merged.tokenizer.encode("The quick brown fox jumps over the lazy dog."), tokens)
        let ours = try forwardAll(m, tokens, a), ref = try forwardAll(mm, tokens, nil), base = try forwardAll(m, tokens, nil)
        let d = Self.relative(ours, ref[...]), moved = Self.relative(base, ref[...])
        print("smollm2 gguf: adapter vs merged GGUF max rel \(d); adapter moves logits by \(moved)")
        XCTAssertLessThanOrEqual(d, 1e-4)
        XCTAssertGreaterThan(moved, 1e-2)
    }

    // MARK: Batch invariance

    /// Sequences with adapter a, adapter b, none, and a again, in one step (and a's prompt split into chunks) give
    /// bit for bit the logits each gives alone.
    func checkBatchInvariance(_ m: DecoderModel, _ label: String, prompts: [[Int]]) throws {
        let a = try Self.randomAdapter(m.config, rank: 4, seed: 21)
        let b = try Self.randomAdapter(m.config, rank: 2, targets: [.q, .v, .down], layers: [0], seed: 22)
        let adapters: [LoRAAdapter?] = [a, b, nil, a]
        let alone = try zip(prompts, adapters).map { try forwardAll(m, $0, $1) }
        let batch = try m.forward(zip(prompts, adapters).map {
            SequenceChunk(cache: m.makeCache(capacity: nil), tokens: $0, logits: .all, adapter: $1)
        })
        for i in prompts.indices {
            XCTAssertEqual(batch[i].map(\.bitPattern), alone[i].map(\.bitPattern), "\(label): sequence \(i) batched != alone")
        }
        XCTAssertNotEqual(alone[0], try forwardAll(m, prompts[0], nil), "\(label): the adapter changes the logits")
        XCTAssertNotEqual(alone[0], try forwardAll(m, prompts[0], b), "\(label): different adapters differ")
        // Chunked: the first half of sequence 0 with a base sequence, then the rest with sequence 1 of adapter b.
        let c0 = m.makeCache(capacity: nil), c1 = m.makeCache(capacity: nil), c2 = m.makeCache(capacity: nil)
        let h = prompts[0].count / 2
        let s1 = try m.forward([SequenceChunk(cache: c2, tokens: prompts[2], logits: .all),
                                SequenceChunk(cache: c0, tokens: Array(prompts[0][..<h]), logits: .all, adapter: a)])
        let s2 = try m.forward([SequenceChunk(cache: c1, tokens: prompts[1], logits: .all, adapter: b),
                                SequenceChunk(cache: c0, tokens: Array(prompts[0][h...]), logits: .all, adapter: a)])
        XCTAssertEqual((s1[1] + s2[1]).map(\.bitPattern), alone[0].map(\.bitPattern), "\(label): chunked != alone")
        XCTAssertEqual(s1[0].map(\.bitPattern), alone[2].map(\.bitPattern), "\(label): base beside an adapter")
        XCTAssertEqual(s2[0].map(\.bitPattern), alone[1].map(\.bitPattern), "\(label): adapter b beside a")
    }

    func testBatchInvarianceTiny() throws {
        let prompts = [[5, 17, 99, 3, 8, 9], [11, 12, 13], [600, 1, 999, 45, 45, 7, 250], [42, 8, 7, 6]]
        for family in ["llama", "qwen2"] {
            for precision in [Precision.reference, .fast] {
                try checkBatchInvariance(try decoder(Self.tiny(family), precision).1, "\(family) \(precision)", prompts: prompts)
            }
        }
    }

    func testBatchInvarianceSmolLM2() throws {
        let (bundle, m) = try decoder(TestModel.path, .fast)
        let prompts = try ["What is the capital of France?", "Hi", "Write a haiku about the sea.", "2+2="].map { try bundle.tokenizer.encode($0) }
        try checkBatchInvariance(m, "smollm2", prompts: prompts)
    }

    // MARK: Generator and Scheduler

    /// Requests with two adapters and none, generated together, each give the tokens they give alone; a Scheduler
    /// with the prefix cache on gives the same, and never reuses rows computed with another adapter (or none).
    func testGeneratorAndSchedulerCarryAdapters() async throws {
        let (bundle, m) = try decoder(TestModel.path, .fast)
        let a = try Self.randomAdapter(m.config, rank: 4, seed: 31, range: 0.15)
        let b = try Self.randomAdapter(m.config, rank: 8, targets: [.q, .k, .v, .o], seed: 32, range: 0.15)
        let prompt = try bundle.chatPromptIDs([ChatMessage(role: "user", content: "Name a colour.")])
        let p = GenerateParameters(maxNewTokens: 6, stopAtEOS: false)
        let requests = [a, b, nil].map { SequenceRequest(prompt: prompt, parameters: p, adapter: $0) }
        let generator = bundle.makeGenerator()
        let alone = try requests.map { try generator.generate([$0])[0].tokens }
        let together = try generator.generate(requests, chunkSize: 5).map(\.tokens)
        XCTAssertEqual(together, alone)
        XCTAssertNotEqual(alone[0], alone[2], "adapter a should change the greedy answer (else this test proves little)")
        XCTAssertNotEqual(alone[1], alone[2], "adapter b should change the greedy answer")

        let scheduler = try Scheduler(generator: generator, maxSequences: 4, contextLength: 256, maxTokensPerStep: 32,
                                      prefixCacheBytes: 64 << 20)
        defer { scheduler.beginShutdown(cancelInFlight: true) }
        // One after another: each later request finds the earlier prompts' rows cached, but only its own adapter's.
        for (i, r) in requests.enumerated() {
            let out = try await PrefixCacheTests.run(scheduler, r)[0]
            XCTAssertEqual(out.tokens, alone[i], "request \(i) through the scheduler")
        }
        XCTAssertEqual(scheduler.metrics.prefixCacheHits, 0, "no request may reuse another adapter's rows")
        for (i, r) in requests.enumerated() {
            let out = try await PrefixCacheTests.run(scheduler, r)[0]
            XCTAssertEqual(out.tokens, alone[i], "request \(i) again, from its own cached rows")
        }
        XCTAssertEqual(scheduler.metrics.prefixCacheHits, 3)
        // All three at once.
        async let x = PrefixCacheTests.run(scheduler, requests[0])
        async let y = PrefixCacheTests.run(scheduler, requests[1])
        async let z = PrefixCacheTests.run(scheduler, requests[2])
        let all = try await [x[0].tokens, y[0].tokens, z[0].tokens]
        XCTAssertEqual(all, alone)
    }
}
