import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// `causal serve --adapter name=DIR`: the base model and two LoRA adapters (random, written as PEFT directories) in one
/// server; requests select them by `model`, run in one continuous batch, and each answer equals what that adapter
/// (or the base) gives alone through the library.
enum AdapterShared {
    /// A seeded adapter with every factor random in ±range (B too, so the answers change).
    static func randomAdapter(_ model: DecoderConfig, rank: Int, targets: [LoRATarget], seed: UInt64, range: Float = 0.15) throws -> LoRAAdapter {
        let a = try LoRAAdapter(config: LoRAConfig(rank: rank, alpha: Double(2 * rank), targets: targets), model: model)
        var state = seed
        for i in 0..<a.count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            a.data[i] = (Float(state >> 40) / Float(1 << 24) * 2 - 1) * range
        }
        return a
    }

    static let root = FileManager.default.temporaryDirectory.appendingPathComponent("adapter-server-\(UUID().uuidString)").path

    /// Adapter "alpha" (all targets, rank 4) and "beta" (attention only, rank 8), written and read back.
    static let adapters: [(name: String, adapter: LoRAAdapter)] = {
        do {
            let config = (Shared.bundle.model as! DecoderModel).config
            let list = [("alpha", try randomAdapter(config, rank: 4, targets: LoRATarget.allCases, seed: 41)),
                        ("beta", try randomAdapter(config, rank: 8, targets: [.q, .k, .v, .o], seed: 42))]
            for (name, a) in list { try a.write(to: root + "/" + name, baseModel: Shared.modelPath) }
            return try list.map { ($0.0, try LoRAAdapter.load(directory: root + "/" + $0.0, model: config)) }
        } catch { fatalError("\(error)") }
    }()

    static let service: OpenAIService = {
        var c = Shared.config
        c.adapters = adapters.map { ServedAdapter(name: $0.name, directory: root + "/" + $0.name) }
        do { return try OpenAIService(bundle: Shared.bundle, configuration: c) } catch { fatalError("\(error)") }
    }()

    /// What the library gives for one request alone, with `adapter`.
    static func alone(_ ids: [Int], _ p: GenerateParameters, _ adapter: LoRAAdapter?) throws -> GenerationResult {
        try Shared.bundle.makeGenerator().generate([SequenceRequest(prompt: ids, parameters: p, adapter: adapter)])[0]
    }
}

final class AdapterServerTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: AdapterShared.service) }
    var base: String { AdapterShared.service.modelID }

    func testModelsListBaseAndAdapters() async throws {
        _ = AdapterShared.service
        try await app.test(.router) { client in
            let r = try await client.execute(uri: "/v1/models", method: .get)
            XCTAssertEqual(r.status, .ok)
            let data = (try r.json()["data"] as? [Any] ?? []).map(object)
            XCTAssertEqual(data.map { $0["id"] as? String }, [self.base, "alpha", "beta"])
            XCTAssertEqual(data.map { $0["parent"] as? String }, [nil, self.base, self.base])
            for id in ["alpha", "\(self.base):beta", self.base] {
                let one = try await client.execute(uri: "/v1/models/\(id)", method: .get)
                XCTAssertEqual(one.status, .ok, id)
            }
            let missing = try await client.execute(uri: "/v1/models/gamma", method: .get)
            XCTAssertEqual(missing.status, .notFound)

            // An unknown adapter in a request: OpenAI's 404 naming the field, listing what is served.
            let bad = try await client.post("/v1/chat/completions", json: ["model": "\(self.base):gamma", "max_tokens": 2,
                                                                         "messages": [["role": "user", "content": "Hi"]]])
            XCTAssertEqual(bad.status, .notFound)
            let e = try bad.apiError()
            XCTAssertEqual(e["param"] as? String, "model")
            XCTAssertEqual(e["code"] as? String, "model_not_found")
            XCTAssertTrue((e["message"] as? String ?? "").contains("'alpha', 'beta'"), "\(e)")
        }
    }

    /// Three chat requests at once (base, alpha by name, beta as base:beta), greedy: each answer equals that adapter's
    /// answer alone; and the adapters do change the answer.
    func testConcurrentRequestsEachEqualTheirAdapterAlone() async throws {
        let adapters = AdapterShared.adapters
        let ids = try Shared.chatIDs("Tell me a short fact about the Moon.")
        let p = GenerateParameters(maxNewTokens: 12)
        let expected = try [nil, adapters[0].adapter, adapters[1].adapter].map { try AdapterShared.alone(ids, p, $0) }
        XCTAssertNotEqual(expected[0].tokens, expected[1].tokens, "adapter alpha should change the greedy answer")
        XCTAssertNotEqual(expected[0].tokens, expected[2].tokens, "adapter beta should change the greedy answer")
        let models = [base, "alpha", "\(base):beta"]
        try await app.test(.router) { client in
            try await withThrowingTaskGroup(of: (Int, [String: Any]).self) { group in
                for (i, m) in models.enumerated() {
                    group.addTask {
                        let r = try await client.post("/v1/chat/completions", json: [
                            "model": m, "temperature": 0, "max_tokens": 12,
                            "messages": [["role": "user", "content": "Tell me a short fact about the Moon."]]])
                        XCTAssertEqual(r.status, .ok, r.text)
                        return (i, try r.json())
                    }
                }
                var seen = 0
                for try await (i, d) in group {
                    XCTAssertEqual(d["model"] as? String, models[i])
                    XCTAssertEqual(object(firstChoice(d)["message"])["content"] as? String, expected[i].text, models[i])
                    XCTAssertEqual(object(d["usage"])["completion_tokens"] as? Int, expected[i].tokens.count, models[i])
                    seen += 1
                }
                XCTAssertEqual(seen, 3)
            }
        }
    }

    /// The prompt-list path (several prompts, n > 1 choices) carries the adapter too.
    func testCompletionPromptListWithAdapter() async throws {
        let beta = AdapterShared.adapters[1].adapter
        let prompts = ["The sky is", "Water boils at"]
        let p = GenerateParameters(maxNewTokens: 6, stopAtEOS: true)
        let expected = try prompts.map { try AdapterShared.alone(try Shared.bundle.tokenizer.encode($0), p, beta).text }
        try await app.test(.router) { client in
            let r = try await client.post("/v1/completions", json: ["model": "beta", "prompt": prompts, "max_tokens": 6,
                                                                  "temperature": 0, "n": 2])
            XCTAssertEqual(r.status, .ok, r.text)
            let choices = (try r.json()["choices"] as? [Any] ?? []).map(object)
            XCTAssertEqual(choices.count, 4)
            for c in choices {
                let i = c["index"] as? Int ?? -1
                XCTAssertEqual(c["text"] as? String, expected[i / 2], "choice \(i)")
            }
        }
    }

    func testBadAdapterArgumentsAndDirectories() throws {
        XCTAssertThrowsError(try ServedAdapter(argument: "noequals")) { XCTAssertTrue("\($0)".contains("name=DIR"), "\($0)") }
        XCTAssertThrowsError(try ServedAdapter(argument: "a:b=/x")) { XCTAssertTrue("\($0)".contains("':'"), "\($0)") }
        var c = Shared.config
        c.adapters = [ServedAdapter(name: "gone", directory: AdapterShared.root + "/does-not-exist")]
        XCTAssertThrowsError(try OpenAIService(bundle: Shared.bundle, configuration: c)) {
            XCTAssertTrue("\($0)".contains("does-not-exist"), "\($0)")
        }
        _ = AdapterShared.adapters
        c.adapters = [ServedAdapter(name: Shared.modelID, directory: AdapterShared.root + "/alpha")]
        XCTAssertThrowsError(try OpenAIService(bundle: Shared.bundle, configuration: c)) {
            XCTAssertTrue("\($0)".contains("base model"), "\($0)")
        }
    }
}
