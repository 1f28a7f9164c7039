package com.igbutton.client;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The gRPC service config {@link IgbuttonClient} installs by default: retry UNAVAILABLE (AIP-194)
 * on the calls that are safe to repeat (SendButtonTemplate, which always carries a request_id;
 * ValidateButtonTemplate; AckPostbacks), up to 5 attempts with exponential backoff from 0.1 s to
 * 5 s. The build copies the repository's {@code clients/service_config.json}, which the Go client
 * embeds too, into the jar as {@code com/igbutton/client/service_config.json}.
 *
 * <p>A gRPC retry resends the same request message, so a retried send carries the same
 * request_id and igbutton sends it at most once.
 */
public final class ServiceConfig {
  /** The resource the build copies clients/service_config.json to. */
  public static final String RESOURCE = "service_config.json";

  private ServiceConfig() {}

  /** The service config's JSON text, as shipped in the jar. */
  public static String json() {
    try (InputStream in = ServiceConfig.class.getResourceAsStream(RESOURCE)) {
      if (in == null) {
        throw new IllegalStateException(RESOURCE + " is missing from the igbutton client's jar");
      }
      return new String(in.readAllBytes(), StandardCharsets.UTF_8);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /**
   * The service config as {@code ManagedChannelBuilder.defaultServiceConfig} takes it: JSON
   * objects as maps, arrays as lists, numbers as doubles.
   */
  public static Map<String, ?> asMap() {
    Struct.Builder struct = Struct.newBuilder();
    try {
      JsonFormat.parser().merge(json(), struct);
    } catch (InvalidProtocolBufferException e) {
      throw new IllegalStateException(RESOURCE + " is not valid JSON", e);
    }
    return toMap(struct.build());
  }

  private static Map<String, Object> toMap(Struct struct) {
    Map<String, Object> map = new LinkedHashMap<>();
    struct.getFieldsMap().forEach((key, value) -> map.put(key, toJava(value)));
    return map;
  }

  private static Object toJava(Value value) {
    switch (value.getKindCase()) {
      case STRUCT_VALUE:
        return toMap(value.getStructValue());
      case LIST_VALUE:
        return toList(value.getListValue());
      case NUMBER_VALUE:
        return value.getNumberValue();
      case STRING_VALUE:
        return value.getStringValue();
      case BOOL_VALUE:
        return value.getBoolValue();
      default:
        return null;
    }
  }

  private static List<Object> toList(ListValue list) {
    List<Object> out = new ArrayList<>();
    for (Value v : list.getValuesList()) {
      out.add(toJava(v));
    }
    return out;
  }
}
