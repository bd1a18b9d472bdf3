import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// The default model and one service over it, shared by the tests (loaded once).
enum Shared {
    static let modelPath: String = {
        if let p = ProcessInfo.processInfo.environment["CAUSAL_MODEL"], !p.isEmpty { return p }
        do { return try ModelFetcher.ensure() } catch { fatalError("cannot obtain the default model: \(error)") }
    }()

    static let bundle: ModelBundle = {
        do { return try ModelBundle(path: modelPath) } catch { fatalError("cannot load \(modelPath): \(error)") }
    }()

    /// A small context (so "too long" prompts are cheap) and a small body limit (so 413 is cheap).
    static let config = ServerConfiguration(maxSequences: 8, context: 512, maxTokensPerStep: 64, maxQueue: 64,
                                            maxBodyBytes: 64 << 10, logLevel: .warning)

    static let service: OpenAIService = {
        do { return try OpenAIService(bundle: bundle, configuration: config) } catch { fatalError("\(error)") }
    }()

    static var modelID: String { service.modelID }

    /// The chat prompt ids of one user message.
    static func chatIDs(_ user: String) throws -> [Int] {
        try bundle.chatPromptIDs([ChatMessage(role: "user", content: user)])
    }

    /// What `Generator.generate` gives for one request alone.
    static func alone(_ ids: [Int], _ p: GenerateParameters) throws -> GenerationResult {
        try bundle.makeGenerator().generate([SequenceRequest(prompt: ids, parameters: p)])[0]
    }
}

/// Helpers for requests through HummingbirdTesting.
extension TestClientProtocol {
    @discardableResult
    func post(_ uri: String, json: Any, headers: HTTPFields = [:]) async throws -> TestResponse {
        let data = try JSONSerialization.data(withJSONObject: json)
        return try await post(uri, raw: String(decoding: data, as: UTF8.self), headers: headers)
    }

    @discardableResult
    func post(_ uri: String, raw: String, headers: HTTPFields = [:]) async throws -> TestResponse {
        var h = headers
        h[.contentType] = "application/json"
        return try await execute(uri: uri, method: .post, headers: h, body: ByteBuffer(string: raw))
    }
}

extension TestResponse {
    var text: String { String(decoding: body.readableBytesView, as: UTF8.self) }

    func json(file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let obj = try JSONSerialization.jsonObject(with: Data(body.readableBytesView))
        guard let d = obj as? [String: Any] else {
            XCTFail("not a JSON object: \(text)", file: file, line: line)
            return [:]
        }
        return d
    }

    /// The `data:` payloads of a server-sent event stream, in order.
    var sseData: [String] {
        text.components(separatedBy: "\n\n").compactMap { block -> String? in
            let lines = block.split(separator: "\n").filter { $0.hasPrefix("data: ") }
            return lines.isEmpty ? nil : lines.map { String($0.dropFirst(6)) }.joined(separator: "\n")
        }
    }

    /// The `error` object of an OpenAI-style error body.
    func apiError(file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let e = try json(file: file, line: line)["error"] as? [String: Any]
        XCTAssertNotNil(e, "no error object in \(text)", file: file, line: line)
        if let e {
            XCTAssertNotNil(e["message"] as? String, file: file, line: line)
            XCTAssertNotNil(e["type"] as? String, file: file, line: line)
            XCTAssertTrue(e.keys.contains("param") && e.keys.contains("code"), "error lacks param/code: \(text)", file: file, line: line)
        }
        return e ?? [:]
    }
}

func object(_ v: Any?) -> [String: Any] { v as? [String: Any] ?? [:] }
func firstChoice(_ d: [String: Any]) -> [String: Any] { object((d["choices"] as? [Any])?.first) }
