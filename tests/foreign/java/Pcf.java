// Parsing Canonical Form and CRC-64-AVRO fingerprints from Java's own Avro implementation (the
// specification's reference: org.apache.avro.SchemaNormalization), for the foreign-client tests.
// Compiled and run by tests/foreign/run.sh against Debian's libavro-java (/usr/share/java).
//
//   java -cp avro.jar:jackson-core-asl.jar:jackson-mapper-asl.jar:slf4j-api.jar:DIR Pcf FILE...
//
// Prints one JSON line per schema file, in argument order:
//   {"file": FILE, "name": full name or null, "canonical": PCF, "fingerprint": 16 hex digits}
// (the fingerprint's 8 bytes little-endian, the order single-object encoding writes them in), or
//   {"file": FILE, "error": "why Java's parser rejected it"}
// and exits 1 if any file was rejected. `Pcf --version` prints the Avro library's version.
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

public final class Pcf {
  public static void main(String[] args) throws Exception {
    PrintStream out = new PrintStream(System.out, true, "UTF-8");
    if (args.length == 1 && args[0].equals("--version")) {
      String v = Schema.class.getPackage().getImplementationVersion();
      out.println(v == null ? "unknown" : v);
      return;
    }
    if (args.length == 0) {
      System.err.println("usage: Pcf SCHEMA_FILE... | Pcf --version");
      System.exit(2);
    }
    boolean failed = false;
    for (String file : args) {
      StringBuilder line = new StringBuilder("{\"file\":").append(quote(file));
      try {
        String text = new String(Files.readAllBytes(Paths.get(file)), StandardCharsets.UTF_8);
        Schema schema = new Schema.Parser().parse(text); // a new parser: no names shared between files
        long fp = SchemaNormalization.parsingFingerprint64(schema);
        StringBuilder hex = new StringBuilder();
        for (int i = 0; i < 8; i++) hex.append(String.format("%02x", (fp >>> (8 * i)) & 0xff));
        boolean named = schema.getType() == Schema.Type.RECORD || schema.getType() == Schema.Type.ENUM
            || schema.getType() == Schema.Type.FIXED;
        line.append(",\"name\":").append(named ? quote(schema.getFullName()) : "null")
            .append(",\"canonical\":").append(quote(SchemaNormalization.toParsingForm(schema)))
            .append(",\"fingerprint\":").append(quote(hex.toString()));
      } catch (Exception e) {
        failed = true;
        line.append(",\"error\":").append(quote(e.getClass().getName() + ": " + e.getMessage()));
      }
      out.println(line.append('}'));
    }
    out.flush();
    System.exit(failed ? 1 : 0);
  }

  /** A JSON string literal. */
  private static String quote(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"': b.append("\\\""); break;
        case '\\': b.append("\\\\"); break;
        case '\n': b.append("\\n"); break;
        case '\r': b.append("\\r"); break;
        case '\t': b.append("\\t"); break;
        default:
          if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
          else b.append(c);
      }
    }
    return b.append('"').toString();
  }
}
