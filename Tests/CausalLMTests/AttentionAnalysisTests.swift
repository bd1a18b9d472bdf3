import Foundation
import XCTest
import CausalLM

/// `causal analyze attention` (AttentionAnalysis): the matrices are the ones the forward used (P·V reproduces each
/// head's attention output, BERT's log-sum-exp too, and recording leaves the decoder's logits bit-identical), the
/// masks hold (causal: lower-triangular with a positive diagonal; mixed BERT heads: one triangle), rows are
/// distributions, and the ranks and singular values agree with numpy's matrix_rank / svd on the same matrices.
final class AttentionAnalysisTests: XCTestCase {
    static let smolText = "The quick brown fox jumps over the lazy dog because it was late for dinner at home."
    static let miniText = "The quick brown fox jumps over the lazy dog because it was late for dinner at home."

    static let smol: DecoderModel = {
        do { return try DecoderModel(gguf: TestModel.gguf) } catch { fatalError("cannot load the default model: \(error)") }
    }()

    static let smolReport: AttentionReport = {
        do { return try AttentionAnalysis.analyze(model: TestModel.path, text: smolText) } catch { fatalError("\(error)") }
    }()

    static let miniReport: AttentionReport = {
        do { return try AttentionAnalysis.analyze(model: MiniLM.directory, text: miniText) } catch { fatalError("\(error)") }
    }()

    /// Rows are distributions over exactly the keys the mask allows, and P·V is the forward's attention output.
    func checkDistributionsAndOutputs(_ r: AttentionReport, _ what: String, lse: Bool) {
        let T = r.tokenIDs.count
        var worstRow = 0.0, worstOut = 0.0, worstLSE = 0.0
        for a in r.heads {
            XCTAssertEqual(a.size, T)
            XCTAssertEqual(a.singularValues.count, T)
            for i in 0..<T {
                var sum = 0.0
                for j in 0..<T {
                    let p = a.p(i, j)
                    if a.allowed[i * T + j] { XCTAssertTrue(p >= 0 && p <= 1, "\(what) L\(a.layer)H\(a.head) P[\(i)][\(j)] = \(p)") }
                    else { XCTAssertEqual(p, 0, "\(what) L\(a.layer)H\(a.head): masked P[\(i)][\(j)] = \(p)") }
                    sum += p
                }
                worstRow = max(worstRow, abs(sum - 1))
            }
            worstOut = max(worstOut, a.outputError)
            if lse { worstLSE = max(worstLSE, a.lseError ?? .infinity) } else { XCTAssertNil(a.lseError) }
            XCTAssertLessThanOrEqual(a.outputError, 1e-5, "\(what) L\(a.layer)H\(a.head): P·V vs the forward's output (values up to \(a.valueScale))")
            XCTAssertEqual(a.entropy, (0..<T).map { i in (0..<T).reduce(0.0) { s, j in
                let p = a.p(i, j); return p > 0 ? s - p * log(p) : s } }.reduce(0, +) / Double(T), accuracy: 1e-12)
            XCTAssertEqual(a.diagonalMass, (0..<T).reduce(0.0) { $0 + a.p($1, $1) } / Double(T), accuracy: 1e-15)
        }
        XCTAssertLessThanOrEqual(worstRow, 1e-6, "\(what): a row does not sum to 1")
        if lse { XCTAssertLessThanOrEqual(worstLSE, 1e-5, "\(what): log-sum-exp vs the kernel's") }
        print("\(what): \(r.heads.count) heads of \(T) tokens; max |row sum − 1| \(worstRow), max |P·V − output| \(worstOut)"
              + (lse ? ", max |lse − kernel's| \(worstLSE)" : ""))
    }

    // MARK: SmolLM2 (causal)

    func testSmolLM2MatricesAreTheForwards() throws {
        let r = Self.smolReport
        XCTAssertEqual(r.architecture, "llama")
        XCTAssertEqual(r.attention, "causal")
        XCTAssertEqual(r.layerCount, 30)
        XCTAssertEqual(r.headCount, 9)
        XCTAssertEqual(r.heads.count, 270)
        XCTAssertGreaterThan(r.tokenIDs.count, 10)
        checkDistributionsAndOutputs(r, "SmolLM2", lse: false)
    }

    func testRecordingLeavesTheLogitsBitIdentical() throws {
        let tok = try ByteLevelBPETokenizer(gguf: TestModel.gguf)
        let ids = try tok.encode(Self.smolText)
        let plain = try AttentionAnalysis.logits(Self.smol, ids: ids, recording: false)
        let recorded = try AttentionAnalysis.logits(Self.smol, ids: ids, recording: true)
        XCTAssertEqual(plain.count, ids.count * Self.smol.vocabularySize)
        XCTAssertEqual(plain.map(\.bitPattern), recorded.map(\.bitPattern))
        // And the model is left as it was: a third run without the recorder is still the same.
        let again = try AttentionAnalysis.logits(Self.smol, ids: ids, recording: false)
        XCTAssertEqual(again.map(\.bitPattern), plain.map(\.bitPattern))
    }

    /// A causal head's matrix is lower-triangular with a positive diagonal, so det P = Π P_ii > 0: it is nonsingular in
    /// exact arithmetic. Numerically its smallest singular value is at most its smallest diagonal entry (σ_min ≤ |λ|_min,
    /// and a triangular matrix's eigenvalues are its diagonal), which can be far below σ_max · T · ε: such heads have a
    /// numerical rank below T, and the SVD must say so.
    func testCausalHeadsAreLowerTriangularWithAPositiveDiagonal() throws {
        let r = Self.smolReport
        let T = r.tokenIDs.count
        var fullRank = 0, fullRank64 = 0, forcedBelow = 0, smallestDiagonal = 1.0, worstLogDet = 0.0
        for a in r.heads {
            XCTAssertEqual(a.mask, "causal")
            var minDiagonal = 1.0
            for i in 0..<T {
                XCTAssertGreaterThan(a.p(i, i), 0, "L\(a.layer)H\(a.head): P[\(i)][\(i)]")
                minDiagonal = min(minDiagonal, a.p(i, i))
                for j in (i + 1)..<max(i + 1, T) { XCTAssertEqual(a.p(i, j), 0, "L\(a.layer)H\(a.head): P[\(i)][\(j)] above the diagonal") }
            }
            smallestDiagonal = min(smallestDiagonal, minDiagonal)
            let s = a.singularValues
            XCTAssertLessThanOrEqual(s.last!, minDiagonal * (1 + 1e-9) + 1e-14 * s[0], "L\(a.layer)H\(a.head): σ_min ≤ min P_ii")
            if minDiagonal < a.tolerance { forcedBelow += 1; XCTAssertLessThan(a.rank, T, "L\(a.layer)H\(a.head)") }
            if a.rank == T { fullRank += 1 }
            if a.rankFloat64 == T { fullRank64 += 1 }
            // |det P| = Π σ_i = Π P_ii, wherever the smallest singular value is resolved (well above ε · σ_max).
            if s.last! / s[0] > 1e-10 {
                let logDet = s.reduce(0.0) { $0 + log($1) }
                let logDiagonal = (0..<T).reduce(0.0) { $0 + log(a.p($1, $1)) }
                worstLogDet = max(worstLogDet, abs(logDet - logDiagonal))
            }
        }
        XCTAssertLessThanOrEqual(worstLogDet, 1e-6, "Σ ln σ vs Σ ln P_ii")
        print("SmolLM2 causal heads (T = \(T)): \(fullRank)/\(r.heads.count) of full numerical rank under the float32 rule, "
              + "\(fullRank64) under the float64 rule; \(forcedBelow) have a diagonal entry below the tolerance; smallest diagonal "
              + "entry \(smallestDiagonal); max |Σ ln σ − Σ ln P_ii| \(worstLogDet)")
    }

    // MARK: MiniLM (bidirectional, mixed)

    func testMiniLMMatricesAreTheForwards() throws {
        let r = Self.miniReport
        XCTAssertEqual(r.architecture, "bert")
        XCTAssertEqual(r.attention, "bidirectional")
        XCTAssertEqual(r.layerCount, 6)
        XCTAssertEqual(r.headCount, 12)
        XCTAssertEqual(r.tokens.first, "[CLS]")
        XCTAssertEqual(r.tokens.last, "[SEP]")
        checkDistributionsAndOutputs(r, "MiniLM", lse: true)
        for a in r.heads {
            XCTAssertEqual(a.mask, "bidirectional")
            XCTAssertTrue(a.probabilities.allSatisfy { $0 > 0 }, "L\(a.layer)H\(a.head): a bidirectional softmax is positive everywhere")
        }
    }

    func testMiniLMMixedHeadsReadOneTriangle() throws {
        for attention in [AttentionChoice.mixed, .mixedByLayer] {
            let r = try AttentionAnalysis.analyze(model: MiniLM.directory, text: Self.miniText, attention: attention)
            XCTAssertEqual(r.attention, attention.rawValue)
            checkDistributionsAndOutputs(r, "MiniLM \(attention.rawValue)", lse: true)
            let T = r.tokenIDs.count
            for a in r.heads {
                let backward = attention == .mixed ? a.head >= r.headCount / 2 : a.layer % 2 == 1
                XCTAssertEqual(a.mask, backward ? "backward" : "forward")
                var minDiagonal = 1.0
                for i in 0..<T {
                    XCTAssertGreaterThan(a.p(i, i), 0)
                    minDiagonal = min(minDiagonal, a.p(i, i))
                    for j in 0..<T where backward ? j < i : j > i { XCTAssertEqual(a.p(i, j), 0) }
                }
                // Triangular with a positive diagonal: nonsingular; σ_min ≤ min P_ii.
                XCTAssertLessThanOrEqual(a.singularValues.last!, minDiagonal * (1 + 1e-9) + 1e-14 * a.singularValues[0])
            }
        }
    }

    // MARK: Against numpy

    /// Dumps every matrix of both models, runs numpy's svd and matrix_rank (tol = S.max() * T * float32 eps, and the
    /// default float64 rule) on them, and compares with ours.
    func testRanksAndSingularValuesAgreeWithNumpy() throws {
        let python = try numpyPython()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("attention-numpy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let mixed = try AttentionAnalysis.analyze(model: MiniLM.directory, text: Self.miniText, attention: .mixed)
        for (name, r) in [("smollm2", Self.smolReport), ("minilm", Self.miniReport), ("minilm-mixed", mixed)] {
            let T = r.tokenIDs.count
            var data = Data(capacity: r.heads.count * T * T * 8)
            for a in r.heads { for p in a.probabilities { withUnsafeBytes(of: p.bitPattern.littleEndian) { data.append(contentsOf: $0) } } }
            let bin = dir.appendingPathComponent("\(name).f64")
            try data.write(to: bin)
            let script = """
            import json, sys, numpy as np
            A = np.fromfile(sys.argv[1], dtype='<f8').reshape(-1, \(T), \(T))
            out = {"ranks32": [], "ranks64": [], "sv": []}
            for a in A:
                s = np.linalg.svd(a, compute_uv=False)
                out["sv"].append(s.tolist())
                out["ranks32"].append(int(np.linalg.matrix_rank(a, tol=s.max() * max(a.shape) * np.finfo(np.float32).eps)))
                out["ranks64"].append(int(np.linalg.matrix_rank(a)))
            json.dump(out, sys.stdout)
            """
            let result = try runPython(python, script: script, args: [bin.path])
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(result.utf8)) as? [String: Any])
            let ranks32 = try XCTUnwrap(obj["ranks32"] as? [Int]), ranks64 = try XCTUnwrap(obj["ranks64"] as? [Int])
            let svs = try XCTUnwrap(obj["sv"] as? [[Double]])
            XCTAssertEqual(ranks32.count, r.heads.count)
            var worstSV = 0.0, deficient32 = 0, deficient64 = 0, compared64 = 0
            for (k, a) in r.heads.enumerated() {
                let s = a.singularValues, ref = svs[k]
                for (x, y) in zip(s, ref) { worstSV = max(worstSV, abs(x - y) / ref[0]) }
                // Two SVDs agree to about 1e-14 σ_max: a singular value closer than that to the tolerance may fall on
                // either side of it. The float32 rule's tolerance (~1e-7 σ_max T) is never that close here; the float64
                // rule's (~2e-16 σ_max T) sits at that noise level, so heads with a value near it are left out.
                func near(_ tol: Double) -> Bool { s.contains { abs($0 - tol) <= 1e-13 * s[0] } }
                let tol32 = RankThreshold.float32.tolerance(singularValues: s, size: T)
                let tol64 = RankThreshold.float64.tolerance(singularValues: s, size: T)
                XCTAssertFalse(near(tol32), "\(name) L\(a.layer)H\(a.head): a singular value at the float32 tolerance \(tol32): \(s)")
                XCTAssertEqual(a.rank, ranks32[k], "\(name) L\(a.layer)H\(a.head): rank (float32 rule) vs numpy")
                if a.rank < T { deficient32 += 1 }
                if ranks64[k] < T { deficient64 += 1 }
                if near(tol64) { continue }
                compared64 += 1
                XCTAssertEqual(a.rankFloat64, ranks64[k], "\(name) L\(a.layer)H\(a.head): rank (float64 rule) vs numpy")
            }
            XCTAssertLessThanOrEqual(worstSV, 1e-12, "\(name): singular values vs numpy, relative to σ_max")
            XCTAssertGreaterThanOrEqual(Double(compared64), 0.8 * Double(r.heads.count), "\(name): too few heads clear of the float64 tolerance")
            print("\(name): \(r.heads.count) heads, T = \(T): float32-rule ranks equal numpy's for all, float64-rule ranks for the "
                  + "\(compared64) clear of the tolerance; max |σ − numpy σ| / σ_max \(worstSV); heads below full rank (numpy): "
                  + "\(deficient32) (float32 rule), \(deficient64) (float64 rule)")
        }
    }

    // MARK: SVD and errors

    func testJacobiSingularValuesOfKnownMatrices() {
        // diag(3, 2, 0) permuted: singular values 3, 2, 0; rank 2.
        let a: [Double] = [0, 2, 0,
                           0, 0, 0,
                           3, 0, 0]
        let s = JacobiSVD.singularValues(a, rows: 3, cols: 3)
        XCTAssertEqual(s[0], 3, accuracy: 1e-15); XCTAssertEqual(s[1], 2, accuracy: 1e-15); XCTAssertEqual(s[2], 0, accuracy: 1e-15)
        XCTAssertEqual(JacobiSVD.rank(s, tolerance: RankThreshold.float64.tolerance(singularValues: s, size: 3)), 2)
        // [[1, 1], [0, 1]]: σ = (√5 ± 1) / 2.
        let b = JacobiSVD.singularValues([1, 1, 0, 1], rows: 2, cols: 2)
        XCTAssertEqual(b[0], (5.0.squareRoot() + 1) / 2, accuracy: 1e-15)
        XCTAssertEqual(b[1], (5.0.squareRoot() - 1) / 2, accuracy: 1e-15)
        // A rank-2 4 × 3 matrix u1 v1ᵀ + u2 v2ᵀ (orthonormal u, v): singular values 5, 0.25, 0.
        let u1: [Double] = [0.5, 0.5, 0.5, 0.5], u2: [Double] = [0.5, -0.5, 0.5, -0.5]
        let v1: [Double] = [1, 0, 0], v2: [Double] = [0, 0.6, 0.8]
        var c = [Double](repeating: 0, count: 12)
        for i in 0..<4 { for j in 0..<3 { c[i * 3 + j] = 5 * u1[i] * v1[j] + 0.25 * u2[i] * v2[j] } }
        let sc = JacobiSVD.singularValues(c, rows: 4, cols: 3)
        XCTAssertEqual(sc.count, 3)
        XCTAssertEqual(sc[0], 5, accuracy: 1e-14); XCTAssertEqual(sc[1], 0.25, accuracy: 1e-14); XCTAssertEqual(sc[2], 0, accuracy: 1e-14)
        XCTAssertEqual(JacobiSVD.rank(sc, tolerance: RankThreshold.float32.tolerance(singularValues: sc, size: 4)), 2)
        XCTAssertEqual(RankThreshold.float32.tolerance(singularValues: sc, size: 4), 5 * 4 * Double(Float.ulpOfOne))
        XCTAssertEqual(RankThreshold.absolute(0.3).tolerance(singularValues: sc, size: 4), 0.3)
        XCTAssertEqual(JacobiSVD.rank(sc, tolerance: 0.3), 1)
    }

    func testBadInputIsNamed() throws {
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        let empty = message { _ = try AttentionAnalysis.analyze(model: MiniLM.directory, text: "") }
        XCTAssertTrue(empty.contains("empty"), empty)
        let long = message { _ = try AttentionAnalysis.analyze(model: MiniLM.directory, text: String(repeating: "word ", count: 600)) }
        XCTAssertTrue(long.contains("602 tokens") && long.contains("512"), long)
        let tok = try ByteLevelBPETokenizer(gguf: TestModel.gguf)
        let tooMany = [Int](repeating: try tok.encode(" the")[0], count: Self.smol.contextLength + 1)
        let ctx = message { _ = try AttentionAnalysis.decoder(Self.smol, ids: tooMany, tokens: []) }
        XCTAssertTrue(ctx.contains("\(Self.smol.contextLength + 1) tokens") && ctx.contains("context"), ctx)
        let missing = message { _ = try AttentionAnalysis.analyze(model: "/nonexistent/model.gguf", text: "hello") }
        XCTAssertTrue(missing.contains("/nonexistent/model.gguf"), missing)
        let wrong = message { _ = try AttentionAnalysis.analyze(model: MiniLM.directory, text: "hello", attention: .causal) }
        XCTAssertTrue(wrong.contains("--attention causal") && wrong.contains("BERT"), wrong)
        let wrong2 = message { _ = try AttentionAnalysis.analyze(model: TestModel.path, text: "hello", attention: .mixedByLayer) }
        XCTAssertTrue(wrong2.contains("mixed-by-layer"), wrong2)
    }

    func testReportFiles() throws {
        let r = Self.miniReport
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("attention-report-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let written = try r.write(to: dir, matrices: true)
        XCTAssertEqual(written.count, 1 + r.layerCount * r.headCount)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertEqual(files.count, written.count, "no temporary files left: \(files)")
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/attention.json"))) as? [String: Any])
        XCTAssertEqual(obj["tokens"] as? [String], r.tokens)
        let heads = try XCTUnwrap(obj["heads"] as? [[String: Any]])
        XCTAssertEqual(heads.count, r.heads.count)
        let h = heads[7], a = r.heads[7]
        XCTAssertEqual(h["rank"] as? Int, a.rank)
        XCTAssertEqual(h["rank_float64"] as? Int, a.rankFloat64)
        // Written with the shortest round-trip digits; Foundation's reader may land one ulp away.
        let sv = try XCTUnwrap(h["singular_values"] as? [Double]), m = try XCTUnwrap((h["matrix"] as? [[Double]])?.flatMap { $0 })
        XCTAssertEqual(sv.count, a.singularValues.count)
        for (x, y) in zip(sv, a.singularValues) { XCTAssertEqual(x, y, accuracy: 4 * y.ulp) }
        XCTAssertEqual(m.count, a.probabilities.count)
        for (x, y) in zip(m, a.probabilities) { XCTAssertEqual(x, y, accuracy: 4 * y.ulp) }
        let svg = try String(contentsOfFile: dir + "/L0H7.svg", encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("[CLS]") && svg.hasSuffix("</svg>\n"))
        XCTAssertEqual(svg.components(separatedBy: "<rect").count - 1, svg.components(separatedBy: "/>").count - 1, "every rect closed")
    }

    // MARK: Python

    struct Unavailable: Error, CustomStringConvertible { let reason: String; var description: String { reason } }

    /// A python with numpy: $CAUSAL_TORCH_VENV's (CI's .venv-train), the package's .venv-train, else python3 on PATH.
    /// Skips with the reason when there is none (fails instead under CAUSAL_REQUIRE_TORCH=1, as CI sets it).
    func numpyPython() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let root = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        var candidates: [String] = []
        if let v = env["CAUSAL_TORCH_VENV"], !v.isEmpty { candidates.append(v + "/bin/python") }
        candidates.append(root.appendingPathComponent(".venv-train/bin/python").path)
        candidates.append("/usr/bin/python3")
        candidates.append("/usr/local/bin/python3")
        for p in candidates where FileManager.default.isExecutableFile(atPath: p) {
            if (try? runPython(p, script: "import numpy", args: [])) != nil { return p }
        }
        let reason = "no python with numpy (tried \(candidates.joined(separator: ", ")))"
        if env["CAUSAL_REQUIRE_TORCH"] == "1" { throw Unavailable(reason: "CAUSAL_REQUIRE_TORCH=1 but \(reason)") }
        throw XCTSkip(reason)
    }

    @discardableResult
    func runPython(_ python: String, script: String, args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", script] + args
        let errFile = FileManager.default.temporaryDirectory.appendingPathComponent("attention-python-\(UUID().uuidString).err")
        guard FileManager.default.createFile(atPath: errFile.path, contents: nil) else { throw Unavailable(reason: "cannot create \(errFile.path)") }
        defer { try? FileManager.default.removeItem(at: errFile) }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = try FileHandle(forWritingTo: errFile)
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()   // stderr goes to a file, so neither pipe can fill up
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw Unavailable(reason: "\(python) failed: " + ((try? String(contentsOf: errFile, encoding: .utf8)) ?? ""))
        }
        return String(decoding: o, as: UTF8.self)
    }
}
