{{/* Labels shared by every object of the release. */}}
{{- define "pagerstream.labels" -}}
app.kubernetes.io/name: pagerstream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* What the Services and the PodDisruptionBudget select: worker pods only. */}}
{{- define "pagerstream.selector" -}}
app.kubernetes.io/name: pagerstream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Environment of the worker and of the deploy Job. Every name is one pagerstream/config.py or
     pagerstream/pagerduty/rest.py reads (tests/unit/test_deploy_manifests.py checks it). */}}
{{- define "pagerstream.env" -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: PAGERSTREAM_PARTITIONS
  value: {{ .Values.kafka.partitions | quote }}
- name: PAGERSTREAM_REPLICATION_FACTOR
  value: {{ .Values.kafka.replicationFactor | quote }}
- name: PAGERSTREAM_APP_ID
  value: {{ .Values.appId | quote }}
- name: PAGERSTREAM_TOPIC_PREFIX
  value: {{ .Values.topicPrefix | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if .Values.kafka.saslMechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ .Values.kafka.saslUsername | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.kafkaSaslPassword }}
{{- end }}
- name: KAFKA_SSL_CHECK_HOSTNAME
  value: {{ .Values.kafka.sslCheckHostname | quote }}
{{- if .Values.tls.kafkaCaFile }}
- name: KAFKA_SSL_CAFILE
  value: /etc/pagerstream/tls/{{ .Values.tls.kafkaCaFile }}
{{- end }}
{{- if .Values.tls.kafkaCertFile }}
- name: KAFKA_SSL_CERTFILE
  value: /etc/pagerstream/tls/{{ .Values.tls.kafkaCertFile }}
- name: KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.kafkaSslKeyPassword }}
      optional: true
{{- end }}
{{- if .Values.tls.kafkaKeyFile }}
- name: KAFKA_SSL_KEYFILE
  value: /etc/pagerstream/tls/{{ .Values.tls.kafkaKeyFile }}
{{- end }}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- if .Values.redis.username }}
- name: REDIS_USERNAME
  value: {{ .Values.redis.username | quote }}
{{- end }}
- name: REDIS_SSL_CHECK_HOSTNAME
  value: {{ .Values.redis.sslCheckHostname | quote }}
{{- if .Values.tls.redisCaFile }}
- name: REDIS_SSL_CA_CERTS
  value: /etc/pagerstream/tls/{{ .Values.tls.redisCaFile }}
{{- end }}
{{- if .Values.tls.redisCertFile }}
- name: REDIS_SSL_CERTFILE
  value: /etc/pagerstream/tls/{{ .Values.tls.redisCertFile }}
{{- end }}
{{- if .Values.tls.redisKeyFile }}
- name: REDIS_SSL_KEYFILE
  value: /etc/pagerstream/tls/{{ .Values.tls.redisKeyFile }}
{{- end }}
- name: PAGERDUTY_EVENTS_URL
  value: {{ .Values.pagerduty.eventsUrl | quote }}
- name: PAGERDUTY_REGION
  value: {{ .Values.pagerduty.region | quote }}
- name: PAGERSTREAM_ALLOW_PRIVATE_PD_URL
  value: "false"
- name: ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.encryptionKey }}
- name: WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.webhookSecret }}
- name: JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.jwtSecret }}
- name: PAGERDUTY_ROUTING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.routingKey }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.redisPassword }}
      optional: true
- name: PAGERDUTY_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.pagerdutyApiKey }}
      optional: true
- name: PAGERDUTY_WEBHOOK_SECRETS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.pagerdutyWebhookSecrets }}
      optional: true
{{- if .Values.env }}
{{ toYaml .Values.env }}
{{- end }}
{{- end }}

{{/* The TLS files (tls.existingSecret) for the worker and the deploy Job: a volume and its mount. */}}
{{- define "pagerstream.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- define "pagerstream.tlsMount" -}}
- name: tls
  mountPath: /etc/pagerstream/tls
  readOnly: true
{{- end }}
