import Foundation
import XCTest
import CausalLM

/// Decoder-only Hugging Face directories (config.json + model.safetensors) against transformers' outputs for the tiny
/// random GPT-2 and LLaMA of Tests/Fixtures/tiny (see its README): logits of each row alone and of the valid rows of a
/// left-padded batch to 1e-4, greedy tokens (16 new, min_new_tokens=16) alone and from padded batches, bit-identical
/// to alone; and errors for broken checkpoints.
final class HFDecoderTests: XCTestCase {
    static let models = ["gpt2", "llama"]

    struct Refs {
        let rows: [[Int]]
        let padID: Int
        let logitsSingle: [[[Double]]]       // per row: (T, V)
        let logitsPadded: [[[Double]]]       // (B, T, V), left padded
        let greedySingle: [[Int]]
        let greedyPadded: [[Int]]
    }

    static func refs(_ model: String) throws -> Refs {
        let r = try XCTUnwrap(Fixtures.json("tiny/\(model)/refs.json") as? [String: Any])
        return Refs(rows: r["rows"] as! [[Int]], padID: r["pad_id"] as! Int,
                    logitsSingle: r["logits_single"] as! [[[Double]]], logitsPadded: r["logits_padded_batch"] as! [[[Double]]],
                    greedySingle: r["greedy_single"] as! [[Int]], greedyPadded: r["greedy_padded_batch"] as! [[Int]])
    }

    static func directory(_ model: String) -> String { Fixtures.url("tiny/\(model)").path }

    /// max |a - b| over the row pairs, with the worst index, for messages.
    func maxDiff(_ ours: [Float], _ ref: [Double]) -> (Double, Int) {
        XCTAssertEqual(ours.count, ref.count)
        var worst = 0.0, at = 0
        for i in 0..<min(ours.count, ref.count) where abs(Double(ours[i]) - ref[i]) > worst { worst = abs(Double(ours[i]) - ref[i]); at = i }
        return (worst, at)
    }

    func testModelsLoadWithTheirArchitecture() throws {
        let g = try ModelBundle(path: Self.directory("gpt2"))
        XCTAssertTrue(g.model is GPT2Model)
        XCTAssertEqual(g.model.vocabularySize, 1000)
        XCTAssertEqual(g.model.contextLength, 128)
        XCTAssertEqual(g.endTokenIDs, [1])
        XCTAssertNil(g.textTokenizer)
        let l = try ModelBundle(path: Self.directory("llama"))
        let llama = try l.llama
        XCTAssertEqual(llama.config.kvHeadCount, 2)
        XCTAssertEqual(llama.config.headDim, 16)
        XCTAssertEqual(llama.config.ropeTheta, 10000)   // from rope_parameters
        XCTAssertEqual(l.padTokenID, 2)
        XCTAssertThrowsError(try g.llama) { XCTAssertTrue("\($0)".contains("LLaMA"), "\($0)") }
    }

    func testLogitsSingleAndPaddedBatchMatchHF() throws {
        for name in Self.models {
            let refs = try Self.refs(name)
            for precision in Precision.allCases {
                let bundle = try ModelBundle(path: Self.directory(name), precision: precision)
                let m = bundle.model
                let V = m.vocabularySize
                // Each row alone, every position.
                var alone: [[Float]] = []
                var worst = 0.0
                for (i, row) in refs.rows.enumerated() {
                    let out = try m.forward([SequenceChunk(cache: m.makeCache(capacity: nil), tokens: row, logits: .all)])[0]
                    let (d, at) = maxDiff(out, refs.logitsSingle[i].flatMap { $0 })
                    XCTAssertLessThanOrEqual(d, 1e-4, "\(name) \(precision) row \(i): worst at position \(at / V), id \(at % V)")
                    worst = max(worst, d)
                    alone.append(out)
                }
                print("\(name) \(precision): logits_single max |Δ| = \(worst)")

                // The left-padded HF batch, unpadded at the edge and run as one ragged batch.
                let padded = PaddedBatch.padding(refs.rows, side: .left, padID: refs.padID)
                let rows = try padded.unpadded(vocabularySize: V)
                XCTAssertEqual(rows, refs.rows)
                let batch = try m.forward(rows.map { SequenceChunk(cache: m.makeCache(capacity: nil), tokens: $0, logits: .all) })
                worst = 0
                for (b, row) in refs.rows.enumerated() {
                    let T = padded.inputIDs[b].count, pad = T - row.count
                    let valid = refs.logitsPadded[b][pad...].flatMap { $0 }     // HF's rows where the mask is 1
                    let (d, at) = maxDiff(batch[b], valid)
                    XCTAssertLessThanOrEqual(d, 1e-4, "\(name) \(precision) padded row \(b): worst at position \(at / V)")
                    worst = max(worst, d)
                    XCTAssertEqual(batch[b].map(\.bitPattern), alone[b].map(\.bitPattern), "\(name) \(precision) row \(b): batch != alone")
                }
                print("\(name) \(precision): logits_padded_batch (valid rows) max |Δ| = \(worst)")
            }
        }
    }

    /// Greedy tokens and the logits they were chosen from, per request.
    func greedy(_ bundle: ModelBundle, _ prompts: [[Int]], chunk: Int? = nil) throws -> (tokens: [[Int]], logits: [[[UInt32]]]) {
        let p = GenerateParameters(maxNewTokens: 16, minNewTokens: 16)
        var logits = [[[UInt32]]](repeating: [], count: prompts.count)
        var observer = GenerationObserver()
        observer.onLogits = { i, l in logits[i].append(l.map(\.bitPattern)) }
        let results = try bundle.makeGenerator().generate(prompts.map { SequenceRequest(prompt: $0, parameters: p) },
                                                          chunkSize: chunk, observer: observer)
        for r in results { XCTAssertEqual(r.finishReason, .length); XCTAssertEqual(r.text, "") }
        return (results.map(\.tokens), logits)
    }

    func testGreedyAloneAndFromPaddedBatchesMatchHF() throws {
        for name in Self.models {
            let refs = try Self.refs(name)
            XCTAssertEqual(refs.greedySingle, refs.greedyPadded)
            for precision in Precision.allCases {
                let bundle = try ModelBundle(path: Self.directory(name), precision: precision)
                var aloneTokens: [[Int]] = [], aloneLogits: [[[UInt32]]] = []
                for row in refs.rows {
                    let g = try greedy(bundle, [row])
                    aloneTokens.append(g.tokens[0]); aloneLogits.append(g.logits[0])
                }
                XCTAssertEqual(aloneTokens, refs.greedySingle, "\(name) \(precision) alone")
                for side in PaddingSide.allCases {
                    let rows = try PaddedBatch.padding(refs.rows, side: side, padID: refs.padID).unpadded(vocabularySize: bundle.model.vocabularySize)
                    for chunk in [nil, 2] {
                        let g = try greedy(bundle, rows, chunk: chunk)
                        XCTAssertEqual(g.tokens, refs.greedySingle, "\(name) \(precision) \(side) chunk \(String(describing: chunk))")
                        XCTAssertEqual(g.logits, aloneLogits, "\(name) \(precision) \(side): per-step logits differ from alone")
                    }
                }
            }
        }
    }

    func testMinNewTokensHoldsBackEOS() throws {
        // Without min_new_tokens, an end token that wins stops the sequence; with it, the runner-up is taken.
        let bundle = try ModelBundle(path: Self.directory("gpt2"))
        let g = Generator(model: bundle.model, tokenizer: nil, endTokenIDs: [734])   // gpt2 row 0's first greedy token
        let row = try Self.refs("gpt2").rows[0]
        let stopped = try g.generate([SequenceRequest(prompt: row, parameters: GenerateParameters(maxNewTokens: 16))])[0]
        XCTAssertEqual(stopped.tokens, [734])
        XCTAssertEqual(stopped.finishReason, .stop)
        let held = try g.generate([SequenceRequest(prompt: row, parameters: GenerateParameters(maxNewTokens: 4, minNewTokens: 4))])[0]
        XCTAssertEqual(held.tokens.count, 4)
        XCTAssertFalse(held.tokens.contains(734))
        XCTAssertThrowsError(try GenerateParameters(minNewTokens: -1).validate())
    }

    // MARK: Tokenizers

    func testDirectoryWithoutTokenizerJSONRefusesTextClearly() throws {
        let bundle = try ModelBundle(path: Self.directory("gpt2"))
        XCTAssertThrowsError(try bundle.tokenizer) { e in
            XCTAssertTrue("\(e)".contains("tokenizer.json") && "\(e)".contains("input_ids"), "\(e)")
        }
        XCTAssertThrowsError(try bundle.chatPromptIDs([ChatMessage(role: "user", content: "hi")])) { e in
            XCTAssertTrue("\(e)".contains("tokenizer.json"), "\(e)")
        }
        XCTAssertThrowsError(try bundle.makeGenerator().generate(
            [SequenceRequest(prompt: [5, 6], parameters: GenerateParameters(maxNewTokens: 2, stop: ["x"]))])) { e in
            XCTAssertTrue("\(e)".contains("tokenizer"), "\(e)")
        }
    }

    /// JSON string literal.
    static func quoted(_ s: String) -> String { JSONText.quoted(s) }

    /// A tokenizer.json holding the default GGUF model's vocabulary and merges (SmolLM2: Digits + ByteLevel).
    static func tokenizerJSON(from gguf: GGUFFile, mergesAsPairs: Bool) throws -> String {
        let tokens = try gguf.stringArray("tokenizer.ggml.tokens")
        let types = try gguf.intArray("tokenizer.ggml.token_type")
        let merges = try gguf.stringArray("tokenizer.ggml.merges")
        var added: [String] = []
        var vocab: [String] = []
        for (id, t) in tokens.enumerated() {
            vocab.append("\(quoted(t)): \(id)")
            if types[id] == 3 || types[id] == 4 {
                added.append(#"{"id": \#(id), "content": \#(quoted(t)), "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": \#(types[id] == 3)}"#)
            }
        }
        let mergeList = merges.map { m -> String in
            guard mergesAsPairs else { return quoted(m) }
            let parts = m.split(separator: " ", maxSplits: 1).map(String.init)
            return "[\(quoted(parts[0])), \(quoted(parts[1]))]"
        }
        return """
        {"version": "1.0", "truncation": null, "padding": null,
         "added_tokens": [\(added.joined(separator: ", "))],
         "normalizer": null,
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
         "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
         "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
         "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                   "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                   "vocab": {\(vocab.joined(separator: ", "))},
                   "merges": [\(mergeList.joined(separator: ", "))]}}
        """
    }

    func testTokenizerJSONBPEMatchesGGUFTokenizerAndHFIDs() throws {
        let gguf = TestModel.gguf
        let reference = try ByteLevelBPETokenizer(gguf: gguf)
        let cases = try XCTUnwrap(Fixtures.json("smollm2/tokenizer.json") as? [[String: Any]])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-tokjson-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for pairs in [false, true] {
            let path = dir.appendingPathComponent("tokenizer.json").path
            try Self.tokenizerJSON(from: gguf, mergesAsPairs: pairs).write(toFile: path, atomically: true, encoding: .utf8)
            let tok = try ByteLevelBPETokenizer(tokenizerJSON: path, eosTokenID: reference.eosTokenID)
            XCTAssertEqual(tok.vocabularySize, reference.vocabularySize)
            XCTAssertEqual(tok.preTokenizerName, "smollm")
            XCTAssertFalse(tok.addBOS)
            var checked = 0
            for c in cases {
                let text = c["text"] as! String, ids = c["ids"] as! [Int]
                XCTAssertEqual(tok.encode(text), ids, text)
                XCTAssertEqual(tok.encode(text), reference.encode(text), text)
                XCTAssertEqual(try tok.decode(ids), try reference.decode(ids), text)
                checked += 1
            }
            XCTAssertGreaterThan(checked, 10)
            XCTAssertEqual(tok.encode("<|im_start|>user"), reference.encode("<|im_start|>user"))
            XCTAssertTrue(tok.isSpecial(reference.encode("<|im_start|>")[0]))
        }
    }

    func testDirectoryWithTokenizerJSONTakesText() throws {
        // The tiny GPT-2 with a byte-level tokenizer.json of 256 single-byte tokens (ids 0..<256, no merges).
        let dir = try copyOfFixture("gpt2")
        defer { try? FileManager.default.removeItem(at: dir) }
        let byteChars = (0..<256).map { b -> String in
            // GPT-2's byte → unicode map: printable Latin-1 bytes stand for themselves, the rest from U+0100 on.
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            let shift = (0..<b).filter { !((33...126).contains($0) || (161...172).contains($0) || (174...255).contains($0)) }.count
            return String(Unicode.Scalar(printable ? UInt32(b) : UInt32(256 + shift))!)
        }
        let vocab = byteChars.enumerated().map { "\(Self.quoted($1)): \($0)" }.joined(separator: ", ")
        let json = #"{"added_tokens": [], "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}, "model": {"type": "BPE", "vocab": {\#(vocab)}, "merges": []}}"#
        try json.write(to: dir.appendingPathComponent("tokenizer.json"), atomically: true, encoding: .utf8)
        let bundle = try ModelBundle(path: dir.path)
        let tok = try XCTUnwrap(bundle.textTokenizer as? ByteLevelBPETokenizer)   // model.type BPE
        XCTAssertEqual(tok.encode("Hi é"), [72, 105, 32, 195, 169])
        XCTAssertEqual(tok.eosTokenID, 1)   // from generation_config.json
        let ids = tok.encode("Hi")
        let r = try bundle.makeGenerator().generate([SequenceRequest(prompt: ids, parameters: GenerateParameters(maxNewTokens: 4, minNewTokens: 4))])[0]
        XCTAssertEqual(r.tokens.count, 4)
        // Ids past the tokenizer's 256 tokens decode to nothing; the others to their bytes.
        XCTAssertEqual(r.text, try tok.decode(r.tokens.filter { $0 < 256 }))
    }

    // MARK: Bad checkpoints

    func copyOfFixture(_ model: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-hf-\(model)-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Fixtures.url("tiny/\(model)"), to: dir)
        try? FileManager.default.removeItem(at: dir.appendingPathComponent("refs.json"))
        return dir
    }

    /// Rewrites model.safetensors with `edit` applied to the (name, shape, bytes) list.
    func rewriteSafetensors(_ dir: URL, _ edit: (inout [(String, [Int], Data)]) -> Void) throws {
        let path = dir.appendingPathComponent("model.safetensors").path
        let f = try SafetensorsFile(path: path)
        let raw = try Data(contentsOf: URL(fileURLWithPath: path))
        var list = f.tensors.map { t in (t.name, t.shape, raw.subdata(in: t.fileOffset..<(t.fileOffset + t.byteCount))) }
        edit(&list)
        var header: [String] = [], offset = 0
        for (name, shape, bytes) in list {
            header.append(#"\#(Self.quoted(name)): {"dtype": "F32", "shape": [\#(shape.map(String.init).joined(separator: ", "))], "data_offsets": [\#(offset), \#(offset + bytes.count)]}"#)
            offset += bytes.count
        }
        var h = Data(("{" + header.joined(separator: ", ") + "}").utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var out = Data()
        withUnsafeBytes(of: UInt64(h.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(h)
        for (_, _, bytes) in list { out.append(bytes) }
        try out.write(to: URL(fileURLWithPath: path))
    }

    func editConfig(_ dir: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = dir.appendingPathComponent("config.json")
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        edit(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: url)
    }

    func assertLoadFails(_ dir: URL, mentions words: String..., file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try ModelBundle(path: dir.path), file: file, line: line) { e in
            XCTAssertTrue(e is CausalError, "\(e)", file: file, line: line)
            for w in words { XCTAssertTrue("\(e)".contains(w), "'\(e)' does not mention '\(w)'", file: file, line: line) }
        }
    }

    func testBadCheckpointsNameTheFileAndTensorOrField() throws {
        let cases: [(String, String, String)] = [("gpt2", "transformer.h.1.mlp.c_fc.weight", "transformer.h.0.attn.c_proj.weight"),
                                                  ("llama", "model.layers.1.self_attn.k_proj.weight", "lm_head.weight")]
        for (model, missing, reshaped) in cases {
            // A missing tensor.
            var dir = try copyOfFixture(model)
            try rewriteSafetensors(dir) { $0.removeAll { $0.0 == missing } }
            assertLoadFails(dir, mentions: "model.safetensors", missing, "missing")
            try FileManager.default.removeItem(at: dir)

            // A tensor of the wrong shape (same element count, other dims).
            dir = try copyOfFixture(model)
            try rewriteSafetensors(dir) { list in
                let i = list.firstIndex { $0.0 == reshaped }!
                let s = list[i].1
                list[i].1 = [s[0] / 2, s[1] * 2]
            }
            assertLoadFails(dir, mentions: "model.safetensors", reshaped, "shape")
            try FileManager.default.removeItem(at: dir)

            // Config fields missing or of the wrong type.
            let field = model == "gpt2" ? "n_head" : "num_attention_heads"
            dir = try copyOfFixture(model)
            try editConfig(dir) { $0.removeValue(forKey: field) }
            assertLoadFails(dir, mentions: "config.json", field, "missing")
            try editConfig(dir) { $0[field] = "four" }
            assertLoadFails(dir, mentions: "config.json", field, "integer")
            try editConfig(dir) { $0[field] = 4; $0["model_type"] = "mamba" }
            assertLoadFails(dir, mentions: "config.json", "model_type", "mamba")
            try FileManager.default.removeItem(at: dir)
        }

        // LLaMA's rope_parameters: a wrong type inside is named with its path.
        let dir = try copyOfFixture("llama")
        defer { try? FileManager.default.removeItem(at: dir) }
        try editConfig(dir) { $0["rope_parameters"] = ["rope_theta": "big", "rope_type": "default"] }
        assertLoadFails(dir, mentions: "rope_parameters.rope_theta", "config.json")
        try editConfig(dir) { $0["rope_parameters"] = ["rope_theta": 10000.0, "rope_type": "yarn"] }
        assertLoadFails(dir, mentions: "rope_type", "yarn")
        // An untied checkpoint without lm_head.weight.
        try editConfig(dir) { $0["rope_parameters"] = ["rope_theta": 10000.0, "rope_type": "default"] }
        try rewriteSafetensors(dir) { $0.removeAll { $0.0 == "lm_head.weight" } }
        assertLoadFails(dir, mentions: "lm_head.weight", "missing")
        // A truncated file.
        let st = dir.appendingPathComponent("model.safetensors")
        let d = try Data(contentsOf: st)
        try d.prefix(d.count - 100).write(to: st)
        assertLoadFails(dir, mentions: "model.safetensors", "past the end")
    }

    func testShardedCheckpointGivesTheSameLogits() throws {
        // The tiny GPT-2 split into two shards named by model.safetensors.index.json.
        let dir = try copyOfFixture("gpt2")
        defer { try? FileManager.default.removeItem(at: dir) }
        let single = dir.appendingPathComponent("model.safetensors")
        let f = try SafetensorsFile(path: single.path)
        let raw = try Data(contentsOf: single)
        let half = f.tensors.count / 2
        var weightMap: [String] = []
        for (k, part) in [Array(f.tensors[..<half]), Array(f.tensors[half...])].enumerated() {
            let name = "model-0000\(k + 1)-of-00002.safetensors"
            var header: [String] = [], body = Data()
            for t in part {
                header.append(#""\#(t.name)": {"dtype": "F32", "shape": [\#(t.shape.map(String.init).joined(separator: ", "))], "data_offsets": [\#(body.count), \#(body.count + t.byteCount)]}"#)
                body.append(raw.subdata(in: t.fileOffset..<(t.fileOffset + t.byteCount)))
                weightMap.append(#""\#(t.name)": "\#(name)""#)
            }
            var h = Data(("{" + header.joined(separator: ", ") + "}").utf8)
            while h.count % 8 != 0 { h.append(0x20) }
            var out = Data()
            withUnsafeBytes(of: UInt64(h.count).littleEndian) { out.append(contentsOf: $0) }
            out.append(h); out.append(body)
            try out.write(to: dir.appendingPathComponent(name))
        }
        try FileManager.default.removeItem(at: single)
        try #"{"metadata": {}, "weight_map": {\#(weightMap.joined(separator: ", "))}}"#
            .write(to: dir.appendingPathComponent("model.safetensors.index.json"), atomically: true, encoding: .utf8)
        let refs = try Self.refs("gpt2")
        let m = try ModelBundle(path: dir.path).model
        let sharded = try m.forward([SequenceChunk(cache: m.makeCache(capacity: nil), tokens: refs.rows[0], logits: .all)])[0]
        let m1 = try ModelBundle(path: Self.directory("gpt2")).model
        let whole = try m1.forward([SequenceChunk(cache: m1.makeCache(capacity: nil), tokens: refs.rows[0], logits: .all)])[0]
        XCTAssertEqual(sharded.map(\.bitPattern), whole.map(\.bitPattern))
    }

    func testF16AndBF16CheckpointsMatchF32() throws {
        // The tiny LLaMA with every tensor converted to F16 (and BF16): fast keeps the type, reference converts to
        // fp32; both stay close to the F32 logits, and fast F16 is batch invariant.
        let refs = try Self.refs("llama")
        for dtype in ["F16", "BF16"] {
            let dir = try copyOfFixture("llama")
            defer { try? FileManager.default.removeItem(at: dir) }
            let path = dir.appendingPathComponent("model.safetensors").path
            let f = try SafetensorsFile(path: path)
            let raw = try Data(contentsOf: URL(fileURLWithPath: path))
            var header: [String] = [], body = Data(), offset = 0
            for t in f.tensors {
                let floats: [Float] = raw.subdata(in: t.fileOffset..<(t.fileOffset + t.byteCount)).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                let halves: [UInt16] = floats.map { dtype == "F16" ? Float16($0).bitPattern : UInt16(($0.bitPattern + 0x7FFF + (($0.bitPattern >> 16) & 1)) >> 16) }
                halves.withUnsafeBytes { body.append(contentsOf: $0) }
                header.append(#""\#(t.name)": {"dtype": "\#(dtype)", "shape": [\#(t.shape.map(String.init).joined(separator: ", "))], "data_offsets": [\#(offset), \#(offset + halves.count * 2)]}"#)
                offset += halves.count * 2
            }
            var h = Data(("{" + header.joined(separator: ", ") + "}").utf8)
            while h.count % 8 != 0 { h.append(0x20) }
            var out = Data()
            withUnsafeBytes(of: UInt64(h.count).littleEndian) { out.append(contentsOf: $0) }
            out.append(h); out.append(body)
            try out.write(to: URL(fileURLWithPath: path))
            var results: [[Float]] = []
            for precision in Precision.allCases {
                let m = try ModelBundle(path: dir.path, precision: precision).model
                let row = refs.rows[0]
                let out = try m.forward([SequenceChunk(cache: m.makeCache(capacity: nil), tokens: row, logits: .all)])[0]
                let (d, _) = maxDiff(out, refs.logitsSingle[0].flatMap { $0 })
                XCTAssertLessThan(d, dtype == "F16" ? 0.02 : 0.2, "\(dtype) \(precision)")
                print("llama \(dtype) \(precision): max |Δ| to F32 HF logits = \(d)")
                results.append(out)
                let batch = try m.forward(refs.rows.map { SequenceChunk(cache: m.makeCache(capacity: nil), tokens: $0, logits: .all) })
                XCTAssertEqual(batch[0].map(\.bitPattern), out.map(\.bitPattern), "\(dtype) \(precision) batch != alone")
            }
            // Both precisions multiply the same values (F16/BF16 → fp32 is exact).
            XCTAssertEqual(results[0].map(\.bitPattern), results[1].map(\.bitPattern), dtype)
        }
    }
}
