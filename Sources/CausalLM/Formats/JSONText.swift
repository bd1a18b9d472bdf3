/// JSON text helpers shared by the CLI, the server and the chat templates' `tojson`.
public enum JSONText {
    /// `s` as a JSON string literal, quotes included, escaped as Python's `json.dumps` does (valid RFC 8259):
    /// `"` `\` and the control characters (`\n` `\r` `\t` `\b` `\f` by name, others as `\u00XX`); everything else
    /// kept as UTF-8, or, with `asciiOnly` (`ensure_ascii=True`), DEL and non-ASCII as `\uXXXX` UTF-16 units.
    public static func quoted(_ s: String, asciiOnly: Bool = false) -> String {
        func hex4(_ v: UInt32) -> String {
            let h = String(v, radix: 16)
            return "\\u" + String(repeating: "0", count: max(0, 4 - h.count)) + h
        }
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case _ where u.value < 0x20 || (asciiOnly && u.value == 0x7F): out += hex4(u.value)
            case _ where asciiOnly && u.value > 0x7F: for unit in String(u).utf16 { out += hex4(UInt32(unit)) }
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
